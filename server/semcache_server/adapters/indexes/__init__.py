"""Vector indexes behind `semcache_server.core.ports.VectorIndex`."""
