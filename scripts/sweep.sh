#!/usr/bin/env bash
# Run a list of train.py configs on one machine, one after another or one per GPU, then report.
#
#   scripts/sweep.sh configs/depth_width/*.yaml                  # one after another
#   scripts/sweep.sh --gpus 8 configs/depth_width/*.yaml         # up to 8 runs at once, one GPU each
#   scripts/sweep.sh --prefix dw_short CONFIG... -- trainer.max_steps=2000 eval.n=512   # overrides for every run
#   scripts/sweep.sh --resume configs/depth_width/*.yaml         # a killed sweep: continue runs from last.ckpt
#
# Each CONFIG runs as `python train.py config=CONFIG name=PREFIX/<file stem> OVERRIDES...`, so run k
# writes LOG_ROOT/PREFIX/<stem>/version_N/ and its output goes to LOG_ROOT/PREFIX/<stem>.out. Then
# `python -m igsm report LOG_ROOT/PREFIX --out OUT` writes report.md and the figures; runs that differ
# only in depth and width (the depth_width configs) give the layers x width grid.
# A run that fails is named and the sweep goes on; the exit status is 1 when any run failed.
# On a SLURM cluster: scripts/slurm_sweep.sh runs the same list as a job array.
#
# Options: --gpus N (0 = one run at a time, train.py picks the device; N: run k on GPU k mod N with
# trainer.devices=1), --prefix NAME (default sweep), --log-root DIR (default logs), --out DIR
# (default report/PREFIX), --resume (ckpt_path=last for runs that have a checkpoint), --no-report.
set -uo pipefail

usage() { sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "error: $*" >&2; exit 2; }

GPUS=0 PREFIX=sweep LOG_ROOT=logs OUT="" RESUME=0 REPORT=1
PYTHON=${PYTHON:-python}
CONFIGS=() OVERRIDES=()
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --gpus) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--gpus ${2:-}: must be an integer >= 0"; GPUS=$2; shift 2 ;;
    --prefix) [[ -n ${2:-} && ${2:-} != *" "* ]] || die "--prefix '${2:-}': must be a name without spaces"; PREFIX=$2; shift 2 ;;
    --log-root) [[ -n ${2:-} ]] || die "--log-root needs a folder"; LOG_ROOT=$2; shift 2 ;;
    --out) [[ -n ${2:-} ]] || die "--out needs a folder"; OUT=$2; shift 2 ;;
    --resume) RESUME=1; shift ;;
    --no-report) REPORT=0; shift ;;
    --) shift; OVERRIDES=("$@"); break ;;
    -*) die "unknown option $1 (allowed: --gpus, --prefix, --log-root, --out, --resume, --no-report, --)" ;;
    *) [[ -f $1 ]] || die "config $1: no such file"; CONFIGS+=("$1"); shift ;;
  esac
done
((${#CONFIGS[@]})) || die "no config given (usage: scripts/sweep.sh [options] CONFIG.yaml... [-- key=value...])"
OUT=${OUT:-report/$PREFIX}
ROOT=$(cd "$(dirname "$0")/.." && pwd) || die "cannot find the repository root"

# The same stem twice would write two configs into one run name.
declare -A SEEN
for cfg in "${CONFIGS[@]}"; do
  stem=$(basename "$cfg"); stem=${stem%.*}
  [[ -z ${SEEN[$stem]:-} ]] || die "configs $cfg and ${SEEN[$stem]} have the same name '$stem'"
  SEEN[$stem]=$cfg
done

mkdir -p "$LOG_ROOT/$PREFIX" || die "--log-root $LOG_ROOT: cannot be created"
run_one() {  # run_one CONFIG GPU(-1 = none): train.py in the foreground, output to <stem>.out
  local cfg=$1 gpu=$2 stem args
  stem=$(basename "$cfg"); stem=${stem%.*}
  args=("config=$cfg" "name=$PREFIX/$stem" "log_root=$LOG_ROOT" "${OVERRIDES[@]}")
  if ((RESUME)) && compgen -G "$LOG_ROOT/$PREFIX/$stem/version_*/checkpoints/last.ckpt" > /dev/null; then
    args+=(ckpt_path=last)
  fi
  if ((gpu >= 0)); then
    CUDA_VISIBLE_DEVICES=$gpu "$PYTHON" "$ROOT/train.py" "${args[@]}" trainer.devices=1 > "$LOG_ROOT/$PREFIX/$stem.out" 2>&1
  else
    "$PYTHON" "$ROOT/train.py" "${args[@]}" > "$LOG_ROOT/$PREFIX/$stem.out" 2>&1
  fi
}

# Check every config before the first run starts (a typo fails in seconds, not after hours).
for cfg in "${CONFIGS[@]}"; do
  "$PYTHON" "$ROOT/train.py" "config=$cfg" "name=$PREFIX/check" "log_root=$LOG_ROOT" "${OVERRIDES[@]}" \
    print_config=true > /dev/null || die "config $cfg is rejected by train.py (the line above says why)"
done

FAILED=()
declare -A PID_OF_SLOT CONFIG_OF_PID
finish() {  # finish PID: wait for one run and record its result
  local pid=$1 cfg=${CONFIG_OF_PID[$1]}
  if wait "$pid"; then echo "done   $cfg"; else echo "FAILED $cfg (see its .out file)"; FAILED+=("$cfg"); fi
}
for k in "${!CONFIGS[@]}"; do
  cfg=${CONFIGS[$k]}
  if ((GPUS == 0)); then
    echo "start  $cfg"
    if run_one "$cfg" -1; then echo "done   $cfg"; else echo "FAILED $cfg (see $LOG_ROOT/$PREFIX/*.out)"; FAILED+=("$cfg"); fi
  else
    slot=$((k % GPUS))
    [[ -n ${PID_OF_SLOT[$slot]:-} ]] && finish "${PID_OF_SLOT[$slot]}"
    echo "start  $cfg on GPU $slot"
    run_one "$cfg" "$slot" & PID_OF_SLOT[$slot]=$! CONFIG_OF_PID[$!]=$cfg
  fi
done
for slot in "${!PID_OF_SLOT[@]}"; do finish "${PID_OF_SLOT[$slot]}"; done

if ((REPORT)); then
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m igsm report "$LOG_ROOT/$PREFIX" --out "$OUT" \
    || echo "report failed (exit $?)" >&2
fi
if ((${#FAILED[@]})); then
  echo "${#FAILED[@]} of ${#CONFIGS[@]} runs failed: ${FAILED[*]}" >&2
  exit 1
fi
