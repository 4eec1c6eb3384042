"""Regenerate the Python code of the semcache.v1 contract, or check the checked-in code is fresh.

Usage: python scripts/generate_proto.py [--check]

The generated modules live in client/semcache/v1 so that `from semcache.v1 import semcache_pb2`
works for the server, the client and anyone who installs the client package.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUTPUT_ROOT = ROOT / "client"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(output_root: Path) -> None:
    """Run protoc with the pinned grpcio-tools; its bundled well-known types resolve the imports."""
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={output_root}",
        f"--pyi_out={output_root}",
        f"--grpc_python_out={output_root}",
        *[str(path.relative_to(PROTO_ROOT)) for path in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def generated_files(root: Path) -> set[Path]:
    return {
        path.relative_to(root)
        for path in root.rglob("*")
        if path.is_file() and path.name.endswith(GENERATED_SUFFIXES)
    }


def check() -> int:
    """Generate into a scratch folder and compare: stale code fails CI instead of shipping."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_root = Path(scratch)
        generate(scratch_root)
        expected = generated_files(scratch_root)
        actual = generated_files(OUTPUT_ROOT)
        stale = sorted(
            str(path)
            for path in expected | actual
            if path not in expected
            or path not in actual
            or not filecmp.cmp(scratch_root / path, OUTPUT_ROOT / path, shallow=False)
        )
    if stale:
        print("generated code is stale; run: python scripts/generate_proto.py", file=sys.stderr)
        for path in stale:
            print(f"  {path}", file=sys.stderr)
        return 1
    print(f"generated code is fresh ({len(expected)} files)")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the checked-in code is stale")
    if parser.parse_args().check:
        return check()
    generate(OUTPUT_ROOT)
    print(
        f"generated {len(generated_files(OUTPUT_ROOT))} files under {OUTPUT_ROOT.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
