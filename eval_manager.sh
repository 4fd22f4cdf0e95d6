#!/usr/bin/env bash
# Evaluate many runs with evals.sh: every <game>-<MODEL>-seed_<seed> run (DMC:
# <task>-<MODEL>_DMC-seed_<seed>, train.sh's names) of the lists below that exists in
# $CHECKPOINT_DIR (default saved_models); runs not found are skipped and listed at the end.
# Edit the lists to choose the experiments. Arguments are passed to eval.py for every run:
#   ./eval_manager.sh
#   ./eval_manager.sh -all -device=cuda:1
#   PYTHON=.venv/bin/python CHECKPOINT_DIR=/data/saved_models ./eval_manager.sh
# A failing run does not stop the others; the script lists them at the end and exits 1
# (also when no run at all was found).
set -euo pipefail

GAMES=(Alien Amidar Assault Asterix BankHeist BattleZone Boxing Breakout ChopperCommand CrazyClimber
       DemonAttack Freeway Frostbite Gopher Hero Jamesbond Kangaroo Krull KungFuMaster MsPacman Pong
       PrivateEye Qbert RoadRunner Seaquest UpNDown)      # Atari 100k
DMC_TASKS=()                                              # e.g. (cartpole_balance walker_walk)
SEEDS=(0 1 2 3 4)
MODELS=(STORM GITSTORM)                                   # add REM for REM runs (<game>-REM-seed_<seed>; Atari only)

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  echo "usage: $0 [eval.py flags and config overrides...]  (runs: edit the lists at the top of $0)"
  exit 0
fi
cd "$(dirname "$0")"
CHECKPOINT_DIR=${CHECKPOINT_DIR:-saved_models}
extra=("$@")
failed=()
skipped=()
found=0

evaluate() {  # <env_name> <run_name> <config>
  if [[ ! -d "${CHECKPOINT_DIR}/$2" ]]; then
    skipped+=("$2")
    return
  fi
  found=$((found + 1))
  echo "== $2"
  ./evals.sh "$1" "$2" "$3" -checkpoint_dir="${CHECKPOINT_DIR}" "${extra[@]}" || failed+=("$2")
}

for model in "${MODELS[@]}"; do
  for seed in "${SEEDS[@]}"; do
    for game in "${GAMES[@]}"; do evaluate "$game" "${game}-${model}-seed_${seed}" "$model"; done
    for task in "${DMC_TASKS[@]}"; do evaluate "dmc/${task}" "${task}-${model}_DMC-seed_${seed}" "${model}_DMC"; done
  done
done

if [[ ${#skipped[@]} -gt 0 ]]; then
  echo "skipped ${#skipped[@]} runs not found in ${CHECKPOINT_DIR}/: ${skipped[*]}"
fi
if [[ $found -eq 0 ]]; then
  echo "no run of the lists at the top of $0 exists in ${CHECKPOINT_DIR}/" >&2
  exit 1
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "evaluation failed for: ${failed[*]}" >&2
  exit 1
fi
