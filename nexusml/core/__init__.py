"""The core both sides stand on: errors, the settings machinery, child processes, the metadata contract.

Imports nothing else of ours (tests/test_layers.py checks), so the sync side and the proxy can share it
without depending on each other.
"""
