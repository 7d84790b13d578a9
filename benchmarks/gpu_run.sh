#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one call (a lent H100/H200, see the README):
#   bash benchmarks/gpu_run.sh [OUT_DIR]
#   bash benchmarks/gpu_run.sh OUT_DIR profile   # only: trace the bfloat16 batch-64 step and
#                                                # print where its time goes (~2 minutes)
# Uses the machine's python3 (its jax/torch); installs the carried flax wheel (.whl/) only if
# the machine's flax is older than 0.12. Logs go to OUT_DIR (default: $OUT or /tmp).
set -u
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
if [ "${2:-}" = profile ]; then
  timeout ${STEP_TIMEOUT:-240} python3 benchmarks/train_step.py --model notebook --img-size 640 --batch 64 \
    --dtype bfloat16 --skip-fwd-bwd --skip-torch --repeats 5 --profile "$out/trace" 2>&1 \
    | grep -v "Warning\|cuda_timer" | tee "$out/profile_b64_bfloat16.log"
  exit
fi
# 1) the training step: notebook network at 640, bfloat16 and float32, batch 16 and 64; one
#    process per configuration (a slow compile costs only its own figure), the reference
#    (float32, same GPU) timed first in the first process of each batch size.
for b in 16 64; do
  torch_flag=--torch-first
  for d in bfloat16 float32; do
    timeout ${STEP_TIMEOUT:-150} python3 benchmarks/train_step.py --model notebook --img-size 640 --batch $b \
      --dtype $d --skip-fwd-bwd --repeats 10 --torch-repeats 3 $torch_flag 2>&1 \
      | grep -v "Warning\|cuda_timer" | tee "$out/train_step_gpu_b${b}_$d.log"
    torch_flag=--skip-torch
  done
done
# 2) the assigner at B=16, 8400 anchors, 32 boxes, 80 classes
timeout 60 python3 benchmarks/assigner.py 2>&1 | tee "$out/assigner_gpu.log"
