"""Model updates without downtime: `watch` notices new metadata (a file or an S3 object), `swap` installs the
version beside the served one, loads it as a candidate, smoke-tests it and switches Triton over.
Stands on `nexusml.core`, `nexusml.sync` (the install and the model config) and `nexusml.triton` (the admin
header and key).
"""
