#!/usr/bin/env bash
# Wall time of the default entry points' CPU layouts, side by side in one run (docs/measurements.md#targets: train.py
# and probe.py must each finish in <= 10 minutes on 2 cores of either CPU kind).
#
#   bash benchmarks/cpu_entrypoints.sh [STEPS] [ROUNDS]        # default 200 training steps, 2 rounds
#   TRAIN_ARGS="model.canon=ABCD" bash benchmarks/cpu_entrypoints.sh 200 2   # another model (no probe rounds)
#
# Each variant is the real command (startup, data, Lightning, logging) cut to STEPS optimizer steps
# without its final evaluation; the variants alternate over ROUNDS so a neighbour's load hurts them
# alike. Layouts: one process with two torch threads (the tiny presets before 2026-12-01) and two
# DDP processes with one thread each (configs/tiny.yaml, configs/probe_tiny.yaml), at the same
# global batch, and for train.py one process of one thread (configs/tiny_long.yaml: the second core
# left to a second run); probe.py runs on the newest tiny checkpoint, if there is one. TRAIN_ARGS
# are added to every train.py variant. Absolute numbers need an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-200}
ROUNDS=${2:-2}
LOGS=$(mktemp -d)
trap 'rm -rf "$LOGS"' EXIT
flags=$(lscpu | grep -o -E 'avx512f|avx512_bf16|amx_tile' | sort -u | tr '\n' ' ' || true)
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p') (${flags:-no AVX-512, no AMX}), $(nproc) cores; torch $(python -c 'import torch; print(torch.__version__)')"

train_variants=(
  "1x2threads|trainer.devices=1 trainer.strategy=auto trainer.cpu_threads=2 data.batch_size=16 data.num_workers=1"
  "ddp2x1thread|trainer.devices=2 trainer.strategy=ddp trainer.cpu_threads=1 data.batch_size=8 data.num_workers=0"
  "1x1thread|trainer.devices=1 trainer.strategy=auto trainer.cpu_threads=1 data.batch_size=16 data.num_workers=0"
)
TRAIN_ARGS=${TRAIN_ARGS:-}
probe_steps=$((STEPS / 5))
probe_variants=(
  "1x2threads|trainer.devices=1 trainer.strategy=auto trainer.cpu_threads=2 probe.num_workers=0"
  "ddp2x1thread|trainer.devices=2 trainer.strategy=ddp trainer.cpu_threads=1 probe.num_workers=0"
)
ckpt=$(ls -t logs/tiny/version_*/checkpoints/last.ckpt 2>/dev/null | head -n 1 || true)
[[ -z $TRAIN_ARGS ]] || ckpt=""  # the probe rounds time the default model's probe only

timed() {  # label, command...: prints "label: wall s"
  local label=$1; shift
  local t0=$SECONDS
  "$@" > "$LOGS/out.txt" 2>&1 || { echo "$label: FAILED"; tail -n 5 "$LOGS/out.txt"; return 1; }
  printf "%-28s %5d s\n" "$label" $((SECONDS - t0))
}

for r in $(seq 1 "$ROUNDS"); do
  echo "-- round $r: train.py, $STEPS steps"
  for v in "${train_variants[@]}"; do
    timed "train ${v%%|*}" python train.py trainer.max_steps="$STEPS" eval.final=false name="bench_${v%%|*}" \
      log_root="$LOGS" trainer.enable_progress_bar=false trainer.checkpoint_every=1000000 ${v#*|} $TRAIN_ARGS
  done
  if [[ -n $ckpt ]]; then
    echo "-- round $r: probe.py, $probe_steps steps, 8 test problems per task ($ckpt)"
    for v in "${probe_variants[@]}"; do
      timed "probe ${v%%|*}" python probe.py ckpt="$ckpt" trainer.max_steps="$probe_steps" probe.test_problems=8 \
        name="probe_${v%%|*}" log_root="$LOGS" trainer.enable_progress_bar=false ${v#*|}
    done
  fi
done
