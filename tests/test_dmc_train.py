"""Continuous control end to end: a tiny STORM/GIT-STORM run on dmc/cartpole_balance through
the command line (16 envs in the paper, 2 here), then eval.py on its checkpoints."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config", ["STORM_DMC", "GITSTORM_DMC"])
def test_dmc_cartpole_train_and_eval(tmp_path, config):
    overrides = ["+preset=cpu", "BasicSettings.env_name=dmc/cartpole_balance",
                 f"BasicSettings.RunsDir={tmp_path}/runs", f"BasicSettings.CheckpointDir={tmp_path}/saved_models"]
    train = subprocess.run(
        [sys.executable, "train.py", f"--config-name={config}", *overrides, "BasicSettings.n=cartpole",
         "JointTrainAgent.NumEnvs=2", "JointTrainAgent.SampleMaxSteps=40", "JointTrainAgent.BufferWarmUp=16",
         "JointTrainAgent.SaveEverySteps=20", "JointTrainAgent.BatchSize=2", "JointTrainAgent.BatchLength=4",
         "JointTrainAgent.ImagineBatchSize=4", "JointTrainAgent.ImagineContextLength=2",
         "JointTrainAgent.ImagineBatchLength=4"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stdout + train.stderr
    folder = tmp_path / "saved_models" / "cartpole"
    assert sorted(p.name for p in folder.glob("weights_*.pt")) == ["weights_20.pt", "weights_40.pt"]
    weights = torch.load(folder / "weights_40.pt", weights_only=False)
    assert weights["discrete"] is False and weights["action_dim"] == 1
    buffer = torch.load(folder / "replay_buffer_40.pt", weights_only=True)
    assert buffer["action"].dtype == torch.float32 and buffer["action"].abs().max() <= 1.0
    assert buffer["obs"].shape[0] == 2     # one track per parallel env

    evaluate = subprocess.run(
        [sys.executable, "eval.py", f"-config_path=config_files/{config}.yaml", "-env_name=dmc/cartpole_balance",
         "-run_name=cartpole", f"-checkpoint_dir={tmp_path}/saved_models", f"-output_dir={tmp_path}/eval",
         "-episodes=2", "-max_steps=10", "+preset=cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stdout + evaluate.stderr
    with open(tmp_path / "eval" / "cartpole.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [20, 40]
    # cartpole_balance pays at most 1 per frame, 2 frames per agent step, 10 steps
    assert all(0.0 <= float(r["episode_avg_return"]) <= 20.0 for r in rows)
