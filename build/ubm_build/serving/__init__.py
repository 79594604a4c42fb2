"""Serving on Triton: the model repository writer (`repository`), the python-backend models it
copies in (`triton_models/`, not imported here), the local tritonserver (`server`) and its
Prometheus metrics (`triton_metrics`).

Imports `inputs` (the modules it copies into the repository); nothing from model or export.
"""
