"""Reliability and security scenarios for the NexusML data plane.

Each scenario in `reliability.scenarios` drives the real stack (moto S3, the bundled tritonserver, the
proxy as a real process) on loopback and returns a `ScenarioResult`: figures plus criteria, each marked as
functional or timing. `tests/reliability/` runs every scenario with short settings and asserts only the
functional criteria (the machine is shared, so timing is never a test verdict); `python -m reliability`
runs them longer and writes every figure and verdict into RELIABILITY.md.
"""
