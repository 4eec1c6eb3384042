"""semcache: a semantic cache for LLM applications, served over gRPC."""

__version__ = "0.1.0"
