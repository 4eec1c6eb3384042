"""Builds what would be published, and proves it works with nothing of this clone beside it.

    scripts/dev release        (or: .venv/bin/python scripts/release.py [--keep])

1. Builds the client (./client, `semcache-client`) and the server (`semcache-server`): an sdist and
   a wheel each, with `python -m build` (the wheel is built from the sdist, so the sdist is
   complete), into dist/.
2. Checks them: `twine check --strict`; the server wheel requires the client by name and the
   client's version (no file:// reference), and carries the MiniLM weights.
3. Installs the two wheels into a fresh venv in a temporary folder, with PyPI for their
   dependencies only, and checks that its packages are imported from that venv.
4. Serves the embedded default of that install (`semcache serve` on a free port, its own state
   dir) against the installed Ollama-protocol test server, waits for `semcache health`, asks one
   question twice and checks that the second answer is an exact cache hit.
5. Prints the files' sizes and the venv's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
CLIENT = ROOT / "client"
WEIGHTS = "semcache_server/adapters/embedders/minilm/model.safetensors"
QUESTION = "What is the capital of France?"
MODEL = "llama3.2"


class ReleaseError(Exception):
    """A step failed; the message says which and shows what the tool printed."""


def say(message: str) -> None:
    print(f"release: {message}", flush=True)


def run(
    command: Sequence[str | Path],
    *,
    cwd: Path = ROOT,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> str:
    """Runs a command to its end; its output is shown only when it fails."""
    done = subprocess.run(
        [str(word) for word in command],
        cwd=cwd,
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise ReleaseError(
            f"{' '.join(str(word) for word in command)} exited {done.returncode}:\n"
            f"{done.stdout}{done.stderr}"
        )
    return done.stdout


def project(path: Path) -> dict[str, Any]:
    with (path / "pyproject.toml").open("rb") as handle:
        table: dict[str, Any] = tomllib.load(handle)["project"]
    return table


def file_name(distribution: str) -> str:
    """A distribution's name as wheel and sdist file names spell it."""
    return re.sub(r"[-_.]+", "_", distribution).lower()


def build() -> dict[str, Path]:
    """Both distributions' sdists and wheels in dist/, by kind: client/server wheel/sdist."""
    DIST.mkdir(exist_ok=True)
    found: dict[str, Path] = {}
    for role, source in (("client", CLIENT), ("server", ROOT)):
        meta = project(source)
        stem = f"{file_name(meta['name'])}-{meta['version']}"
        for old in DIST.glob(f"{file_name(meta['name'])}-*"):
            old.unlink()
        say(f"building {meta['name']} {meta['version']} (sdist, then the wheel from it)")
        run([sys.executable, "-m", "build", "--outdir", DIST, source])
        found[f"{role} sdist"] = DIST / f"{stem}.tar.gz"
        found[f"{role} wheel"] = DIST / f"{stem}-py3-none-any.whl"
    missing = [str(path) for path in found.values() if not path.is_file()]
    if missing:
        raise ReleaseError(f"the build wrote no {', '.join(missing)}")
    return found


def wheel_metadata(wheel: Path) -> tuple[list[str], list[str]]:
    """The wheel's Requires-Dist lines and its file names."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata_name = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(metadata_name).decode()
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:")
    ]
    return requires, names


def check(files: Mapping[str, Path]) -> None:
    say("twine check --strict")
    run([sys.executable, "-m", "twine", "check", "--strict", *files.values()])
    client = project(CLIENT)
    requires, names = wheel_metadata(files["server wheel"])
    wanted = f"{client['name']}=={client['version']}"
    if wanted not in requires:
        raise ReleaseError(f"the server wheel does not require {wanted}: {requires}")
    direct = [requirement for requirement in requires if " @ " in requirement]
    if direct:
        raise ReleaseError(f"the server wheel requires files, which no index can serve: {direct}")
    if WEIGHTS not in names:
        raise ReleaseError(f"the server wheel carries no {WEIGHTS}")


def install_environment() -> dict[str, str]:
    """This environment without this clone's Python paths or the dev venv (pip's own settings,
    an index mirror say, stay)."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIRTUAL_ENV"))
    }


def serve_environment(home: Path) -> dict[str, str]:
    """Also without semcache's settings and the user's state and config: only the flags given
    count, and nothing the install writes lands outside the temporary folder."""
    environment = {
        key: value
        for key, value in install_environment().items()
        if not key.startswith(("SEMCACHE_", "REDIS_"))
    }
    environment.pop("OLLAMA_HOST", None)
    for name in ("XDG_STATE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        environment[name] = str(home / name.lower())
    environment["HF_HUB_OFFLINE"] = "1"
    environment["OPENBLAS_NUM_THREADS"] = "1"
    return environment


def install(files: Mapping[str, Path], venv: Path, environment: Mapping[str, str]) -> str:
    """Installs the wheels, then the testing extra (the Ollama-protocol server); returns the
    size of the venv (du -sh) before the extra: what `pip install semcache-server` takes."""
    say(f"installing both wheels into a fresh venv ({venv}), dependencies from PyPI")
    run([sys.executable, "-m", "venv", venv], cwd=venv.parent, env=environment)
    python = venv / "bin" / "python"
    pip: list[str | Path] = [python, "-m", "pip", "install", "--quiet"]
    run([*pip, files["client wheel"], files["server wheel"]], cwd=venv.parent, env=environment)
    run([python, "-m", "pip", "check"], cwd=venv.parent, env=environment)
    size = run(["du", "-sh", venv]).split()[0]
    run([*pip, f"{files['server wheel']}[testing]"], cwd=venv.parent, env=environment)
    located = run(
        [
            python,
            "-c",
            "import json, semcache.v1, semcache_client, semcache_server; "
            "print(json.dumps([m.__file__ for m in (semcache.v1, semcache_client, "
            "semcache_server)]))",
        ],
        cwd=venv.parent,
        env=environment,
    )
    outside = [path for path in json.loads(located) if not Path(path).is_relative_to(venv)]
    if outside:
        raise ReleaseError(f"imported from outside the fresh venv: {outside}")
    return size


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def background(
    command: Sequence[str | Path], log: Path, environment: Mapping[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    """A process writing into log (never a pipe that could fill), stopped with SIGTERM at exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(word) for word in command],
            cwd=log.parent,
            env=dict(environment),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_for(
    ready: Any, process: subprocess.Popen[bytes], log: Path, what: str, seconds: float
) -> None:
    """Polls ready() until it is true; fails when the process exits or time runs out."""
    deadline = time.monotonic() + seconds
    while not ready():
        if process.poll() is not None:
            raise ReleaseError(f"{what} exited {process.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise ReleaseError(f"{what} was not ready within {seconds:.0f} s:\n{log.read_text()}")
        time.sleep(0.5)


def healthy(semcache: Path, target: str, environment: Mapping[str, str], cwd: Path) -> bool:
    done = subprocess.run(
        [str(semcache), "health", "--target", target, "--timeout", "2"],
        cwd=cwd,
        env=dict(environment),
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


def serve_and_ask(venv: Path, home: Path, environment: Mapping[str, str]) -> None:
    bin_dir = venv / "bin"
    ollama_port, port = free_port(), free_port()
    ollama_url = f"http://127.0.0.1:{ollama_port}"
    target = f"127.0.0.1:{port}"
    ollama_log, serve_log = home / "ollama.log", home / "serve.log"
    ollama_command: list[str | Path] = [
        bin_dir / "python",
        "-m",
        "semcache_server.testing.ollama_protocol",
        "--port",
        str(ollama_port),
    ]
    say(f"starting the installed Ollama-protocol test server on {ollama_url}")
    with background(ollama_command, ollama_log, environment) as ollama:
        wait_for(
            lambda: b"listening on" in ollama_log.read_bytes(),
            ollama,
            ollama_log,
            "the Ollama-protocol server",
            60,
        )
        serve_command: list[str | Path] = [
            bin_dir / "semcache",
            "serve",
            "--port",
            str(port),
            "--state-dir",
            home / "state",
            "--ollama-host",
            ollama_url,
        ]
        say(f"starting the installed semcache serve on {target} (embedded default)")
        with background(serve_command, serve_log, environment) as server:
            started = time.monotonic()
            wait_for(
                lambda: healthy(bin_dir / "semcache", target, environment, home),
                server,
                serve_log,
                "semcache serve",
                120,
            )
            say(f"semcache health: SERVING after {time.monotonic() - started:.1f} s")
            ask: list[str | Path] = [bin_dir / "semcache", "ask", QUESTION, "--model", MODEL]
            ask += ["--target", target, "--json"]
            first = json.loads(run(ask, cwd=home, env=environment, timeout=120))
            second = json.loads(run(ask, cwd=home, env=environment, timeout=120))
            sources = (first.get("source"), second.get("source"))
            say(f"asked {QUESTION!r} twice: {sources[0]}, then {sources[1]}")
            if sources != ("SOURCE_LLM", "SOURCE_EXACT") or first["text"] != second["text"]:
                raise ReleaseError(
                    f"expected an LLM answer, then the same answer from the cache:\n"
                    f"{json.dumps(first)}\n{json.dumps(second)}\n{serve_log.read_text()}"
                )
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=30)
            if code != 0:
                raise ReleaseError(
                    f"semcache serve exited {code} on SIGTERM:\n{serve_log.read_text()}"
                )


def file_size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.1f} kB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary folder with the venv and logs"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix="semcache-release-"))
    try:
        files = build()
        check(files)
        venv = home / "venv"
        venv_size = install(files, venv, install_environment())
        serve_and_ask(venv, home, serve_environment(home))
    except (ReleaseError, subprocess.TimeoutExpired) as error:
        print(f"release: FAILED: {error}", file=sys.stderr)
        if args.keep:
            print(f"release: kept {home}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    width = max(len(path.name) for path in files.values())
    for kind, path in files.items():
        print(f"  {path.name:<{width}}  {file_size(path.stat().st_size):>9}  {kind}")
    print(f"  the fresh venv of the two wheels (du -sh, before the testing extra): {venv_size}")
    kept = f"; kept {home}" if args.keep else ""
    say(f"OK in {time.monotonic() - started:.0f} s: {len(files)} files in {DIST}{kept}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
