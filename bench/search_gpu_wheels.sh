#!/usr/bin/env bash
# Wheels the GPU machine lacks for bench/search_gpu.py (the openai client and what it needs; about
# 6 MB), for Python 3.12 on x86-64 Linux, into .whl/search/ (git-ignored). Run here, where PyPI is
# reachable; carry .whl/search to the GPU machine and there:
#   pip install --no-index --find-links .whl/search openai
set -euo pipefail
cd "$(dirname "$0")/.."
PIP="${PIP:-python3 -m pip}"
$PIP download --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest .whl/search "openai>=1.40"
du -sh .whl/search
