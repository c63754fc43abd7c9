"""NexusML data plane. Layers, each importing only those below it (tests/test_layers.py checks):

`core` (errors, settings, processes, the metadata contract) <- `sync` (S3 -> model repository) <- `triton`
(the server and its watchdog) <- `updates` (new versions without downtime); the top-level `proxy` package
stands on `core` alone; `command` (`nexus` and `nexus up`) sits on all of them, and `testing` (the harness,
not shipped in the wheel) on top. `backend/model.py` runs inside Triton and imports none of them.
"""
