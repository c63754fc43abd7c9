"""NexusML front proxy: JSON over HTTP in front of Triton (gRPC or HTTP), validated, bounded, observable.

Modules: `settings` (the environment), `errors` (the stable error codes and their HTTP statuses), `schema`
(the model as Triton describes it), `validation` (JSON body -> arrays), `v2` (the Open Inference Protocol's
bodies), `client` (the one upstream client), `coalesce` (merging concurrent requests), `metrics` (Prometheus
text), `state` (what a worker shares between requests), `model_loader` (the served model's schema, read and
followed), `middleware` (request ids, auth, error bodies, metrics, access log), the handlers `inference`
(`/predict`), `v2_routes`, `health` and `introspection`, `app` (the app factory), `server` (workers, signals,
logs).
"""
