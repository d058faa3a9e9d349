#!/usr/bin/env bash
# Wheels for the GPU machine, which has torch and triton but not prefect, openai or chromadb and
# cannot reach a package index. Downloads the Python 3.12 x86-64 wheels of what the engine needs
# beyond that image into .whl/ (ignored by git), leaving out what the image already has.
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
# On the GPU image already (its package list in the device notes), or unused here. Names are
# compared whole: jinja2 is there, jinja2-humanize-extension is not.
skip=" anyio attrs certifi charset-normalizer click cloudpickle filelock fsspec h11 httpcore httpx humanize idna jinja2 markdown-it-py markupsafe mdurl numpy packaging pathspec prometheus-client protobuf pygments python-dateutil pyyaml requests rich shellingham six sympy tqdm typer typing-extensions urllib3 uvloop zipp grpcio onnxruntime tokenizers huggingface-hub hf-xet flatbuffers mpmath kubernetes frozenlist multidict yarl propcache aiosignal aiohttp aiohappyeyeballs psutil setuptools build pyproject-hooks wrapt regex tabulate networkx pillow "
for f in .whl/*.whl; do
  name=$(basename "$f" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
  case "$skip" in *" $name "*) rm "$f";; esac
done
du -sh .whl; ls .whl | wc -l
