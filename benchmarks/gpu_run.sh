#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one call (a lent H100/H200, see the README):
#   bash benchmarks/gpu_run.sh [OUT_DIR]
#   bash benchmarks/gpu_run.sh OUT_DIR profile   # only: trace the bfloat16 batch-64 step and
#                                                # print where its time goes (~2 minutes)
# The whole run took 518 s on a warm H100 (2026-11-26); the profile is part of it.
# Uses the machine's python3 (its jax/torch); installs the carried flax wheel (.whl/) only if
# the machine's flax is older than 0.12. Logs go to OUT_DIR (default: $OUT or /tmp).
set -u
t_start=$(date +%s)
out=${1:-${OUT:-/tmp}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
} 2>&1 | tee "$out/env.log"
if ! python3 -c "import flax, sys; v = tuple(int(x) for x in flax.__version__.split('.')[:2]); sys.exit(v < (0, 12))"; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/flax-*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
keep_trace() {  # the trace, where the device tool fetches it (nested folders do not come back)
  local trace
  trace=$(find "$out/trace" -name perfetto_trace.json.gz 2>/dev/null | head -1)
  if [ -n "$trace" ]; then cp "$trace" "$out/trace_b64_bfloat16.json.gz" && rm -rf "$out/trace"; fi
}
if [ "${2:-}" = profile ]; then
  timeout ${STEP_TIMEOUT:-240} python3 benchmarks/train_step.py --model notebook --img-size 640 --batch 64 \
    --dtype bfloat16 --skip-fwd-bwd --skip-torch --repeats 5 --profile "$out/trace" 2>&1 \
    | grep -v "Warning\|cuda_timer" | tee "$out/profile_b64_bfloat16.log"
  keep_trace
  exit
fi
# 1) the training step: notebook network at 640, bfloat16 and float32, batch 64 then 16; one
#    process per configuration (a slow compile costs only its own figure), the reference
#    (float32, same GPU) timed first in the first process of each batch size. The bfloat16
#    batch-64 process also traces 2 steps (where the time goes: summary in its log, the trace
#    itself in $OUT/trace_b64_bfloat16.json.gz, for benchmarks/trace_summary.py or Perfetto)
#    and dumps its optimised HLO ($OUT/hlo, gzipped) to name the fusions of the trace.
for b in 64 16; do
  torch_flag=--torch-first
  for d in bfloat16 float32; do
    echo "== $(date -u +%T) batch $b $d"
    extra=(); limit=${STEP_TIMEOUT:-150}; flags=${XLA_FLAGS:-}
    if [ "$b" = 64 ] && [ "$d" = bfloat16 ]; then
      extra=(--profile "$out/trace" --profile-steps 2); limit=${PROFILE_TIMEOUT:-240}
      flags="$flags --xla_dump_to=$out/hlo --xla_dump_hlo_module_re=jit_train_step --xla_dump_hlo_as_text"
    fi
    # A process without the reference keeps JAX's default: one pool allocated up front. Grown
    # on demand (PREALLOCATE=false), the pool was too fragmented after cuDNN autotuning for the
    # 38.9 GiB temporary buffer of float32 at batch 64 on an 80 GB H100 (RESULTS.md).
    alloc=XLA_PYTHON_CLIENT_PREALLOCATE=false
    [ "$torch_flag" = --skip-torch ] && alloc="XLA_PYTHON_CLIENT_PREALLOCATE=true XLA_PYTHON_CLIENT_MEM_FRACTION=0.9"
    env XLA_FLAGS="$flags" $alloc timeout $limit python3 benchmarks/train_step.py --model notebook --img-size 640 --batch $b \
      --dtype $d --skip-fwd-bwd --repeats 10 --torch-repeats 3 $torch_flag "${extra[@]}" 2>&1 \
      | grep -v "Warning\|cuda_timer" | tee "$out/train_step_gpu_b${b}_$d.log"
    torch_flag=--skip-torch
  done
done
if [ -d "$out/hlo" ]; then  # keep the optimised module only, compressed
  find "$out/hlo" -type f ! -name '*after_optimizations.txt' -delete
  find "$out/hlo" -type f -name '*.txt' -exec gzip -f {} +
  find "$out/hlo" -type d -empty -delete
fi
keep_trace
# 2) the assigner at B=16, 8400 anchors, 32 boxes, 80 classes
echo "== $(date -u +%T) assigner"
timeout 60 python3 benchmarks/assigner.py 2>&1 | tee "$out/assigner_gpu.log"
# 3) if the lease allows (under 400 s so far): bfloat16 at batch 128, how the utilisation scales
elapsed=$(( $(date +%s) - t_start ))
if [ $elapsed -lt ${EXTRA_IF_UNDER_S:-400} ]; then
  echo "== $(date -u +%T) batch 128 bfloat16 (after ${elapsed} s)"
  XLA_PYTHON_CLIENT_PREALLOCATE=true XLA_PYTHON_CLIENT_MEM_FRACTION=0.9 \
  timeout 150 python3 benchmarks/train_step.py --model notebook --img-size 640 --batch 128 \
    --dtype bfloat16 --skip-fwd-bwd --skip-torch --repeats 5 2>&1 \
    | grep -v "Warning\|cuda_timer" | tee "$out/train_step_gpu_b128_bfloat16.log"
fi
echo "== $(date -u +%T) done after $(( $(date +%s) - t_start )) s"
