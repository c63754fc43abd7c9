"""The sync side: S3 -> verified artifact -> Triton model repository.

`pipeline.sync` runs the steps: `storage` (S3), `archive` (safe unpacking), `repository` (atomic versions),
`triton_config` (config.pbtxt through Triton's protobuf); `settings` declares what they read. Stands on
`nexusml.core` only.
"""
