"""The cache core: the chain, its layers, hit policies and guards, keys, validation, the domain
types and the interfaces (`ports`) it needs from the outside. It imports no Redis, Ollama, gRPC or
onnxruntime module; the adapters implement its ports."""
