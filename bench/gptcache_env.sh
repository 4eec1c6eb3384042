#!/usr/bin/env bash
# Creates .venv-gptcache/, the environment of GPTCache's side of bench.latency (issue #11):
# GPTCache with its SQLite + FAISS setup, and what semcache's MiniLM embedder imports
# (bench/gptcache_side.py runs it from server/ on PYTHONPATH). A venv of its own, so GPTCache's
# packages never enter .venv. Safe to run again: it installs only when this script changed or the
# embedder's versions in .venv did, and always ends with a two-entry run of the setup.
#
#   bench/gptcache_env.sh          (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-gptcache
MAIN=.venv
export HF_HUB_OFFLINE=1

# 0.1.44 is GPTCache's last release. It needs sqlalchemy for CacheBase("sqlite") and faiss for
# VectorBase("faiss") and would pip-install them itself on first use; SQLAlchemy 2.1 works (its
# declarative_base import only warns).
GPTCACHE=(gptcache==0.1.44 faiss-cpu==1.15.1 SQLAlchemy==2.1.9 cachetools requests)
# What server/semcache_server/adapters/embedders/minilm_onnx.py imports.
EMBEDDER=(numpy onnx onnxruntime tokenizers safetensors)

say() {
  printf 'gptcache_env: %s\n' "$*" >&2
}

# The embedder's packages at the versions semcache runs in .venv, so both sides embed with the same
# onnxruntime; without .venv, the newest.
pins=()
for package in "${EMBEDDER[@]}"; do
  version=""
  if [ -x "$MAIN/bin/python" ]; then
    version=$("$MAIN/bin/python" -c \
      "import importlib.metadata as m; print(m.version('$package'))" 2>/dev/null || true)
  fi
  pins+=("$package${version:+==$version}")
done
wanted="$(sha256sum "$0" | cut -d' ' -f1) ${GPTCACHE[*]} ${pins[*]}"

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" --version 2>&1) ($PYTHON)"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.gptcache-installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  say "installing ${GPTCACHE[*]} ${pins[*]}"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet "${GPTCACHE[@]}" "${pins[@]}"
  printf '%s\n' "$wanted" >"$stamp"
fi

say "checking the setup (two entries through put and get)"
PYTHONPATH=server "$VENV/bin/python" -W ignore::DeprecationWarning -m bench.gptcache_side --check
say "$VENV is ready ($(du -sh "$VENV" | cut -f1))"
