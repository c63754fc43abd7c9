"""The command layer: `cli` (the `nexus` command, errors to exit codes), `stack` (`nexus up`: every process on
one machine), `demo` (the control-plane stand-in that publishes the demo model), `s3local` (the local S3
endpoint) and `settings_docs` (the generated settings reference). The only package that imports `proxy`.
"""
