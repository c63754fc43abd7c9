"""The harness that tests, benchmarks and the reliability bed share: real servers on free loopback ports.

- `environment`: free ports, and an environment for children that cannot reach a real AWS account.
- `servers`: the local S3 (moto), tritonserver and the proxy as managed processes, and one Triton call.
- `models`: publishing a demo model as the control plane would, and syncing it into a repository.
- `artifacts`: broken artifacts and metadata, and the sync failures each must produce.
- `openapi`: the proxy's OpenAPI document and the schemathesis checks run over it.
- `polling`: waiting, with a bound, for what another process does.
- `repository`: the repository's files as git lists them.

It stands on top of every layer (it starts what `nexus up` starts) and never imports `tests`.
"""
