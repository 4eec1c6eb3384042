"""How long `semcache serve` takes to exit on SIGTERM with nothing in flight, on the embedded
default and on an external Redis (the goal: within 1 s).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.shutdown [--rounds 5]
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
from semcache_server.testing.redis_process import RedisProcess
from semcache_server.testing.serve_process import ServeProcess

NOWHERE = "http://127.0.0.1:9"
"""No Ollama is needed: nothing is asked."""


def exit_seconds(state_dir: Path, extra: list[str]) -> float:
    replica = ServeProcess(state_dir, NOWHERE, ["--grace", "0.5", *extra]).start()
    assert replica.process is not None
    started = time.monotonic()
    replica.process.send_signal(signal.SIGTERM)
    # wait(), not communicate(): the replica's own thread reads its output.
    code = replica.process.wait(timeout=60)
    seconds = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"semcache serve exited {code} on SIGTERM:\n{replica.output}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        redis = RedisProcess(root / "redis").start()
        try:
            rows = {
                "embedded Redis": [exit_seconds(root / "embedded", []) for _ in range(args.rounds)],
                "external Redis": [
                    exit_seconds(root / "external", ["--redis-url", redis.url])
                    for _ in range(args.rounds)
                ],
            }
        finally:
            redis.stop()
    print("| SIGTERM, idle | p50 s | max s | goal |")
    print("|---|---|---|---|")
    for name, seconds in rows.items():
        verdict = "PASS" if max(seconds) <= 1.0 else "FAIL"
        print(f"| {name} | {np.median(seconds):.2f} | {max(seconds):.2f} | ≤ 1 s {verdict} |")


if __name__ == "__main__":
    main()
