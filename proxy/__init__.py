"""NexusML front proxy: JSON over HTTP in front of Triton (gRPC or HTTP), validated, bounded, observable.

Modules: `settings` (the environment), `errors` (the stable error codes), `schema` (the model as Triton
describes it), `validation` (JSON body -> arrays), `client` (the one upstream client), `coalesce`
(optional merging of concurrent requests), `metrics` (Prometheus text), `app` (aiohttp routes and the
one middleware), `server` (workers, signals, logs).
"""
