"""Real parts for tests and benchmarks, never imported by the serving path: an Ollama-protocol
server on loopback (needs the `testing` extra, aiohttp) and a redis-server process helper."""
