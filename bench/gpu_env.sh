#!/usr/bin/env bash
# What the GPU machine has, and the device's measured ceilings (kevolve hw calibrate).
set -u
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
export KEVOLVE_HOME=${KEVOLVE_HOME:-/tmp/kevolve-home} PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  python3 -c 'import sys,torch,triton;print(sys.version.split()[0],"torch",torch.__version__,"triton",triton.__version__)'
  python3 -m pip list 2>/dev/null | grep -iE '^(prefect|chromadb|openai|pydantic|fastapi|sqlalchemy|httpx|rich|typer|numpy|pyyaml|transformers|sentence-transformers|psutil) '
  which ncu compute-sanitizer nvcc; ncu --version | tail -1; nproc
} 2>&1 | tee "$OUT/gpu_env.txt"
python3 -m kevolve hw detect
python3 -m kevolve hw calibrate | tee "$OUT/calibrate.txt"
python3 -m kevolve hw calibrate | tee -a "$OUT/calibrate.txt"
cp "$KEVOLVE_HOME"/calibration/*.json "$OUT/" 2>/dev/null
