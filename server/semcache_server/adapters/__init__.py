"""Adapters to the outside world, each behind a port of `semcache_server.core.ports`: the Redis
entry store, the embedded Redis, the Ollama backend, the embedders and the vector indexes."""
