"""`semcache serve` as a real process, for tests and benchmarks that need several replicas or
the front door exactly as a user runs it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from semcache_server.testing.redis_process import free_port

SEMCACHE = shutil.which("semcache") or str(Path(sys.executable).parent / "semcache")


def clean_environment() -> dict[str, str]:
    """This environment without semcache's own settings (nor gRPC's: GRPC_VERBOSITY), so only
    the flags given count; nothing is fetched from a model hub, and BLAS does not spin threads
    beside onnxruntime."""
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SEMCACHE_", "REDIS_", "GRPC_"))
    }
    environment.pop("OLLAMA_HOST", None)
    environment.setdefault("HF_HUB_OFFLINE", "1")
    environment.setdefault("OPENBLAS_NUM_THREADS", "1")
    return environment


class ServeProcess:
    """One `semcache serve` on a free port; start() waits until it reports SERVING."""

    def __init__(
        self,
        state_dir: Path,
        ollama_url: str,
        extra_args: Sequence[str] = (),
        *,
        capture_output: bool = True,
        environment: Mapping[str, str] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """capture_output: keep what it prints for terminate() to return (tests); a long
        benchmark lets it through instead, so a full pipe never blocks the server.
        environment: variables set on top of the clean environment (TMPDIR, say).
        credentials: how start() reaches a server given TLS options (--tls-cert-file)."""
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self._command = [
            SEMCACHE,
            "serve",
            "--port",
            str(self.port),
            "--state-dir",
            str(state_dir),
            "--ollama-host",
            ollama_url,
            *extra_args,
        ]
        self._capture_output = capture_output
        self._environment = dict(environment or {})
        self._credentials = credentials
        self.process: subprocess.Popen[str] | None = None
        self._output: list[str] = []
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def start(self, timeout: float = 60) -> ServeProcess:
        self.process = subprocess.Popen(
            self._command,
            env=clean_environment() | self._environment,
            stdout=subprocess.PIPE if self._capture_output else None,
            stderr=subprocess.STDOUT if self._capture_output else None,
            text=True,
        )
        self._output = []
        if self.process.stdout is not None:
            # Read as it comes: a server that logs a line a call would otherwise fill the pipe
            # and block on its next log line.
            self._reader = threading.Thread(
                target=self._drain, args=(self.process.stdout, self._output), daemon=True
            )
            self._reader.start()
        deadline = time.monotonic() + timeout
        channel = (
            grpc.insecure_channel(self.target)
            if self._credentials is None
            else grpc.secure_channel(self.target, self._credentials)
        )
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"semcache serve exited:\n{self._collected()}")
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    if status == health_pb2.HealthCheckResponse.SERVING:
                        return self
                except grpc.RpcError:
                    time.sleep(0.2)
        raise RuntimeError("semcache serve did not become healthy")

    def terminate(self) -> tuple[int, str]:
        """SIGTERM, as an orchestrator stops it; returns the exit code and everything it printed."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        return self.process.returncode, self._collected()

    def kill(self) -> str:
        """SIGKILL, as a crash or the OOM killer stops it; returns everything it printed."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=30)
        return self._collected()

    @property
    def output(self) -> str:
        """What it printed so far (with capture_output)."""
        return "".join(self._output)

    @staticmethod
    def _drain(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line)
        stream.close()

    def _collected(self) -> str:
        """Everything it printed, once it has exited."""
        if self._reader is not None:
            self._reader.join(timeout=30)
            self._reader = None
        return self.output

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
