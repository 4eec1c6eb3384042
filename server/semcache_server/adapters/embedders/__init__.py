"""Embedders: the in-process MiniLM (`local`) and any Ollama embedding model (`ollama`)."""
