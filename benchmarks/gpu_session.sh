#!/usr/bin/env bash
# One GPU session of the kernel work: correctness on the device, GEMV retune, benchmark, whole-model check.
#
#     OUT=/some/dir bash benchmarks/gpu_session.sh
#
# Compiling dominates a cold run (seconds per kernel variant, one CPU each), so every phase that
# compiles many variants first runs them once in J parallel processes (--part i/J, --warm-only),
# filling Triton's disk cache; the timing run that follows is a single process on a quiet GPU.
set -u
OUT=${OUT:?set OUT to a folder for the results}
J=${J:-14}
T=${T:-1}  # scales every phase time limit
B=benchmarks/kernels.py
mkdir -p "$OUT" /tmp/check
phase() { echo "=== $(date +%T) $*"; }

phase "correctness on the device, $J processes"
for i in $(seq 0 $((J - 1))); do timeout $((50 * T)) python3 $B --check-only --part $i/$J --out /tmp/check > /tmp/check/log_$i 2>&1 & done
wait
grep -h "correctness\|FAILED" /tmp/check/log_*

phase "GEMV candidates: compile in $J processes, then tune M = ${GEMV_MS:-1,2,4}"
for i in $(seq 0 $((J - 1))); do timeout $((35 * T)) python3 $B --autotune --warm-only --kinds gemv --ms ${GEMV_MS:-1,2,4} --part $i/$J > /dev/null 2>&1 & done
wait
timeout $((40 * T)) python3 $B --autotune --no-check --kinds gemv --ms ${GEMV_MS:-1,2,4} --out "$OUT/tune" | grep -v "^skip"

phase "benchmark: compile in $J processes, then time"
for i in $(seq 0 $((J - 1))); do timeout $((45 * T)) python3 $B --warm-only --part $i/$J > /dev/null 2>&1 & done
wait
timeout $((75 * T)) python3 $B --check-from /tmp/check --tag 7b_70b --out "$OUT" | grep -v "^\(7b\|70b\)"
python3 - "$OUT" <<'PY'
import json, sys, glob
for path in glob.glob(sys.argv[1] + "/kernels_*.json"):
    for r in json.load(open(path))["rows"]:
        alt = " ".join(f"{k[:-3]}={r[k]:.1f}" for k in ("gemv_us", "gemm_us", "dequant_cublas_us") if k in r)
        print(f"{r['shape']:11s} {r['m']:5d} {r['dispatched']:14s} ours {r['ours_us']:7.1f} fp16 {r['fp16_us']:7.1f} "
              f"gl {r.get('gemlite_us', float('nan')):7.1f} floor {r['floor_us']:5.1f} | {alt}")
PY

if [ "${MODEL:-1}" = 1 ]; then
  phase "whole model"
  timeout $((70 * T)) python3 benchmarks/model_on_gpu.py --out "$OUT" | tail -9
fi
phase "done"
