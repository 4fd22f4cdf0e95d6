#!/usr/bin/env bash
# Train one run:  ./train.sh <game|dmc/task> <seed> <STORM|GITSTORM|STORM_DMC|GITSTORM_DMC|REM> [extra Hydra overrides]
#   ./train.sh Boxing 0 GITSTORM
#   ./train.sh dmc/cartpole_balance 0 GITSTORM_DMC
#   ./train.sh Boxing 1 REM
# The run is named <game>-<config>-seed_<seed> (dmc/ tasks: <task>-<config>-seed_<seed>);
# re-running the same line resumes it from its latest checkpoint.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 <game|dmc/task> <seed> <STORM|GITSTORM|STORM_DMC|GITSTORM_DMC|REM> [overrides...]" >&2
  exit 2
fi
game=$1; seed=$2; model=$3; shift 3
cd "$(dirname "$0")"
if [[ "$game" == */* ]]; then
  env_name=$game; short=${game#*/}
else
  env_name="ALE/${game}-v5"; short=$game
fi
# An Atari config given a dmc/ task (or the reverse) still works: pick the matching variant.
if [[ "$env_name" == dmc/* && "$model" != *_DMC ]]; then model="${model}_DMC"; fi
if [ ! -f "config_files/${model}.yaml" ]; then
  echo "unknown config '$model': expected one of $(ls config_files/*.yaml | xargs -n1 basename | sed 's/.yaml//' | tr '\n' ' ')" >&2
  exit 2
fi
exec "${PYTHON:-python}" train.py \
  BasicSettings.config_path="config_files/${model}.yaml" \
  BasicSettings.env_name="${env_name}" \
  BasicSettings.Seed="${seed}" \
  BasicSettings.n="${short}-${model}-seed_${seed}" \
  "$@"
