#!/usr/bin/env bash
# Evaluate every saved checkpoint of one run with eval.py; results go to
# outputs/eval_result/<run_name>.csv.
#   ./evals.sh <env_name> <run_name> <config> [eval.py flags and config overrides...]
#   ./evals.sh Boxing Boxing-STORM-seed_0 STORM
#   ./evals.sh Boxing Boxing-REM-seed_1 REM
#   ./evals.sh dmc/cartpole_balance cartpole_balance-GITSTORM_DMC-seed_0 GITSTORM -episodes=10
# <env_name>: an Atari game (Boxing -> ALE/Boxing-v5), a DMC task (cartpole_balance ->
#   dmc/cartpole_balance; DMC task names hold a "_", Atari game names never do), or a full
#   name containing "/" (ALE/Boxing-v5, dmc/walker_walk), passed on unchanged.
# <config>: a config in config_files/ (STORM, GITSTORM, ...); as in train.sh, a dmc/ task
#   given an Atari config uses its _DMC variant.
# Runs from this script's folder like train.sh, so saved_models/ and outputs/ are the
# repository's; give absolute paths to -checkpoint_dir / -output_dir.
# PYTHON=.venv/bin/python ./evals.sh ... picks the interpreter.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: $0 <env_name> <run_name> <config> [eval.py flags and config overrides...]" >&2
  echo "  e.g. $0 Boxing Boxing-STORM-seed_0 STORM" >&2
  exit 2
fi
env_name=$1; run_name=$2; config=$3; shift 3
cd "$(dirname "$0")"
case "$env_name" in
  */*) ;;
  *_*) env_name="dmc/${env_name}" ;;
  *)   env_name="ALE/${env_name}-v5" ;;
esac
config=${config##*/}; config=${config%.yaml}     # also accept config_files/STORM.yaml
if [[ "$env_name" == dmc/* && "$config" != *_DMC ]]; then config="${config}_DMC"; fi
exec "${PYTHON:-python}" eval.py -config_path="config_files/${config}.yaml" -env_name="${env_name}" \
  -run_name="${run_name}" "$@"
