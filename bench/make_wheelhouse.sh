#!/usr/bin/env bash
# Wheels for the GPU machine, which has torch and triton but not prefect, openai or chromadb and
# cannot reach a package index. Downloads the Python 3.12 x86-64 wheels of what the engine needs
# beyond that image, with all their dependencies, into .whl/ (ignored by git).
# Usage: bench/make_wheelhouse.sh [--chroma]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
reqs=("prefect==3.8.8" "fastapi<0.151" "sqlalchemy[asyncio]<2.1" "openai>=1.40")
[ "${1:-}" = "--chroma" ] && reqs+=("chromadb>=1.5,<1.6")
rm -rf .whl && mkdir -p .whl
$PY -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${reqs[@]}" 2>&1 | grep -v WARNING || true
# Everything prefect needs travels, even what the image already has: the image's versions are
# older than prefect accepts (anyio, click), and there is no index there to resolve against.
# Install there with: pip install --no-index --no-deps --target /tmp/site .whl/*.whl
# and PYTHONPATH=/tmp/site. numpy stays the image's, which torch was built against.
rm -f .whl/numpy-*.whl
du -sh .whl; ls .whl | wc -l
