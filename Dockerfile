# semcache on its embedded default: Redis and the embedding model inside the image, Ollama outside.
#   docker build -t semcache .
#   docker run -p 50051:50051 -v "$PWD/api-keys:/run/secrets/api-keys:ro" \
#       -e SEMCACHE_API_KEYS_FILE=/run/secrets/api-keys \
#       -e OLLAMA_HOST=http://host.docker.internal:11434 semcache
# It listens on all interfaces, so it needs API keys (tenant:key lines) and exits without them;
# SEMCACHE_INSECURE_LISTEN=1 accepts serving every answer unauthenticated.
# Set REDIS_URL to use a shared Redis instead of the embedded one.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    OPENBLAS_NUM_THREADS=1 \
    SEMCACHE_HOST=0.0.0.0 \
    SEMCACHE_PORT=50051 \
    SEMCACHE_STATE_DIR=/var/lib/semcache

WORKDIR /src
COPY client ./client
COPY server ./server
COPY pyproject.toml README.md ./
# One install: the client from ./client (semcache-server requires semcache-client by version,
# which no index serves until it is published) and the server with the model weights.
RUN pip install ./client . \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/semcache --create-home semcache

USER semcache
WORKDIR /var/lib/semcache
VOLUME ["/var/lib/semcache"]
EXPOSE 50051
# With TLS, the check is a client like any other (README, "Docker"): it reads SEMCACHE_TLS_CA_FILE,
# SEMCACHE_TLS_SERVER_NAME (when the certificate does not name 127.0.0.1) and, for mutual TLS,
# SEMCACHE_TLS_CLIENT_CERT_FILE and SEMCACHE_TLS_CLIENT_KEY_FILE.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD semcache health --target 127.0.0.1:50051
STOPSIGNAL SIGTERM
CMD ["semcache", "serve"]
