"""The core every other layer stands on: `metadata` (the `.nexus_meta.json` contract), `errors` (failures by
meaning, each with a stable code), `settings` (one frozen object per process, from the environment), `process`
and `exec_guard` (child server processes that never outlive their parent), `probe` (the probe inference and the
candidate's name) and `triton_errors` (what a Triton error means).

Imports nothing else of ours (tests/test_layers.py checks), so the sync side and the proxy can share it
without depending on each other.
"""
