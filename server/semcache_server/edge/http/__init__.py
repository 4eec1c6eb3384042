"""The HTTP front: Ollama's API (`/api/...`) and OpenAI's (`/v1/...`) over the call pipeline
(`edge/calls.py`), so a client written for either gets cached answers by changing its base URL.
What the cache does not model passes through to Ollama as it was (`passthrough.py`)."""
