"""The edge: the fronts that speak a wire format (`grpc/`: semcache.v1; `http/`: Ollama's and
OpenAI's HTTP APIs) over one transport-free call pipeline (`calls.py`: the caller, the call
record fed by the core's answer events, metrics and the request log; `auth.py`; `errors.py`: one
table from domain errors to gRPC and HTTP statuses). Thin by design: no Redis, numpy or Ollama."""
