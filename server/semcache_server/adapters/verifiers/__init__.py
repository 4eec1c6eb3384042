"""Pair verifiers behind `semcache_server.core.ports.Verifier`: a cross-encoder fine-tuned from
the embedder's MiniLM (`pair`), and an optional LLM judge through Ollama (`ollama_judge`)."""
