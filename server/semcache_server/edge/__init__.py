"""The gRPC edge: servicers that translate semcache.v1 messages to the core and back, and the
server wiring. Thin by design: no Redis, numpy or Ollama here."""
