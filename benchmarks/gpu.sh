#!/usr/bin/env bash
# GPU checks and benchmarks for a lent accelerator (run through the device tool; installs nothing).
# Usage there:  bash benchmarks/gpu.sh   (results under $OUT, or ./gpu_results when $OUT is unset)
# Needs the machine's Python with jax[cuda] >= 0.10 and this project's dependencies (flax, optax, xarray,
# scipy, click, tqdm); each step runs on its own so one failure does not hide the others. Under 5 minutes.
set -u
out="${OUT:-gpu_results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
step() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name" | tee -a "$out/summary.txt"
  timeout "$limit" "$@" > "$out/$name.md" 2>&1; local rc=$?
  echo "rc=$rc" | tee -a "$out/summary.txt"; tail -n 20 "$out/$name.md" >> "$out/summary.txt"
}
step devices 60 "$py" -c "import jax; print(jax.__version__, jax.devices())"
step tests_core 90 "$py" -m pytest -q -x tests/test_simulate.py -k "bit_identical or chunk" -p no:cacheprovider
step decode 60 "$py" benchmarks/bench_decode.py
step sweep 60 "$py" benchmarks/bench_sweep.py --samples 65536
step prefill 60 "$py" benchmarks/bench_prefill.py --quick
step memory 60 "$py" benchmarks/bench_memory.py --counts 1e6 1e8 --chunk 1048576
