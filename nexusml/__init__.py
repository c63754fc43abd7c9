"""NexusML data plane. Layers, each importing only those below it (tests/test_layers.py checks):

`core` (errors, settings, processes, the metadata contract) <- `sync` (S3 -> model repository, the Triton
launcher) and the top-level `proxy` package, side by side <- the command (`cli`, `stack`, `demo`, `s3local`,
`settings_docs`) <- `testing` (the shared harness). `backend/model.py` runs inside Triton and imports none.
"""
