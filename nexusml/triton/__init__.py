"""Triton itself: the bundled tritonserver as a managed child process (`server`, `settings`) and the watchdog
that probes it with one inference and restarts it when it stops answering (`watchdog`, standard library only,
so the same file runs as the containers' health check). Stands on `nexusml.core` only.
"""
