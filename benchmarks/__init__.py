"""NexusML benchmark suite: the batching claim measured side by side, in one run (`python -m benchmarks`).

Paths measured on the same machine and the same model artifact:
  naive           one Python web process, one forward per request (`benchmarks/naive_server.py`), via wrk
  proxy_nobatch   proxy -> Triton, dynamic batching off, via wrk
  proxy_batch     proxy -> Triton, dynamic batching on (the project's defaults), via wrk (+ one locust run)
  triton_nobatch  Triton alone, batching off, via perf_analyzer (gRPC)
  triton_batch    Triton alone, batching on, via perf_analyzer (gRPC)
  triton_http     Triton alone, batching on, its HTTP endpoint driven by wrk like the proxy (KServe v2 JSON)
  ceiling         the model in-process at its best batch size (the compute ceiling)
"""
