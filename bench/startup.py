"""Start-up of a real `semcache serve` on a Redis holding N entries: first without a snapshot (it
serves at once and reads every entry into the index meanwhile), then from the snapshot it wrote.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.startup [--entries 1000000]

The entries are written straight into Redis (pipelined HSETs in the entry store's layout), with
unit vectors drawn around a few thousand random centres (so the graph has neighbourhoods to find),
all in one partition. Start-up is timed from the process's launch until health says SERVING.
Redis needs about 2 KB an entry (the 1,536-byte embedding and the rest).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from semcache_server.adapters.embedders.local import MODEL_ID
from semcache_server.adapters.redis_layout import KeyLayout
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess
from tqdm import tqdm

NOWHERE = "http://127.0.0.1:9"
"""No Ollama is needed: nothing is asked."""
DIMENSIONS = 384


def fill(url: str, entries: int, chunk: int = 10_000) -> None:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((4096, DIMENSIONS)).astype(np.float32)
    layout = KeyLayout()
    with redis.Redis.from_url(url) as client:
        for start in tqdm(range(0, entries, chunk), desc="filling Redis", unit="chunk"):
            count = min(chunk, entries - start)
            rows = centres[rng.integers(0, len(centres), count)] + rng.standard_normal(
                (count, DIMENSIONS)
            ).astype(np.float32)
            rows /= np.linalg.norm(rows, axis=1, keepdims=True)
            pipe = client.pipeline(transaction=False)
            for offset, row in enumerate(rows):
                number = start + offset
                pipe.hset(
                    layout.entry(hashlib.sha256(str(number).encode()).hexdigest()[:32]),
                    mapping={
                        "prompt": f"question {number}",
                        "text": f"answer {number}",
                        "partition": "bench-partition",
                        "embedding_model": MODEL_ID,
                        "embedding": row.tobytes(),
                        "hits": 0,
                    },
                )
            pipe.execute()


def start_seconds(replica: ServeProcess) -> float:
    started = time.monotonic()
    replica.start(timeout=3600)
    return time.monotonic() - started


def snapshot_seconds(state_dir: Path, since: float) -> float:
    """When the first snapshot appeared (with --snapshot-interval 1, right after the index was
    loaded), counted from since."""
    while not any(state_dir.glob("index/*/current/manifest.json")):
        time.sleep(0.2)
    return time.monotonic() - since


def logged_seconds(output: str, pattern: str) -> str:
    found = re.search(pattern, output)
    return found.group(0) if found else "(not logged)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        redis_process = RedisProcess(root / "redis").start()
        try:
            fill(redis_process.url, args.entries)
            replica = ServeProcess(
                root / "state",
                NOWHERE,
                ["--redis-url", redis_process.url, "--snapshot-interval", "1"],
            )
            launched = time.monotonic()
            cold = start_seconds(replica)
            indexed = snapshot_seconds(root / "state", launched)
            stop_started = time.monotonic()
            _, cold_output = replica.terminate()
            stop = time.monotonic() - stop_started
            warm = start_seconds(replica)
            _, warm_output = replica.terminate()
        finally:
            redis_process.stop()
    rebuilt = logged_seconds(cold_output, r"index loaded: \d+ entries in [\d.]+ s")
    written = logged_seconds(cold_output, r"index snapshot written: \d+ entries .* in [\d.]+ s")
    loaded = logged_seconds(warm_output, r"index snapshot loaded: \d+ entries in [\d.]+ s")
    verdict = "PASS" if warm <= 30 else "FAIL"
    print(f"semcache serve start-up with {args.entries:,} entries in Redis")
    print("| start | seconds | what the log says |")
    print("|---|---|---|")
    print(f"| no snapshot, to SERVING (exact hits) | {cold:.1f} | |")
    print(f"| no snapshot, until every entry is indexed | {indexed:.1f} | {rebuilt} |")
    print(f"| SIGTERM, to exit (writes the snapshot) | {stop:.1f} | {written} |")
    print(f"| from the snapshot, to SERVING | {warm:.1f} (goal <= 30 s: {verdict}) | {loaded} |")


if __name__ == "__main__":
    main()
