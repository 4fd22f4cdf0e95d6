"""eval.py, evals.sh and eval_manager.sh on a tiny run trained once for this module.

The run is STORM with the CPU preset on Breakout, saved at steps 24 and 48; episodes are
capped with -max_steps so each evaluation takes seconds.
"""
import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch

import eval as eval_script
import evaluation
from agents import build_models
from families import compose_config
from families.storm.acting import make_actor

REPO = Path(__file__).resolve().parent.parent
RUN = "Breakout-STORM-seed_0"          # the name eval_manager.sh looks for
ENV = "ALE/Breakout-v5"
STEPS = (24, 48)
FAST = ["-episodes=2", "-num_envs=2", "-max_steps=30", "+preset=cpu"]
# One intra-op thread: the tiny models gain nothing from more, and on a busy 2-core machine
# two threads per process wait on each other (an evaluation step then takes 10x longer).
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_command(args, env=None):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**ONE_THREAD, **(env or {})})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """saved_models/ holding RUN with weights_24.pt and weights_48.pt (the buffer is ready
    at 40 steps, so the second checkpoint has seen 8 updates)."""
    root = tmp_path_factory.mktemp("trained")
    result = run_command([
        sys.executable, "train.py", "+preset=cpu", f"BasicSettings.env_name={ENV}", "BasicSettings.Device=cpu",
        "JointTrainAgent.SampleMaxSteps=48", "JointTrainAgent.BufferWarmUp=40", "JointTrainAgent.SaveEverySteps=24",
        "JointTrainAgent.BatchSize=2", "JointTrainAgent.BatchLength=8", "JointTrainAgent.ImagineBatchSize=8",
        "JointTrainAgent.ImagineContextLength=4", "JointTrainAgent.ImagineBatchLength=4",
        "JointTrainAgent.VideoEverySteps=0", f"BasicSettings.RunsDir={root}/runs",
        f"BasicSettings.CheckpointDir={root}/saved_models", f"BasicSettings.n={RUN}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (root / "saved_models" / RUN).glob("weights_*.pt")) == ["weights_24.pt",
                                                                                          "weights_48.pt"]
    return root / "saved_models"


def eval_main(capsys, *args):
    """eval.main in this process (no interpreter start-up); returns (exit code, stdout, stderr)."""
    code = eval_script.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def base_args(checkpoint_dir, output_dir, config="config_files/STORM.yaml", env=ENV, run=RUN):
    return [f"-config_path={config}", f"-env_name={env}", f"-run_name={run}",
            f"-checkpoint_dir={checkpoint_dir}", f"-output_dir={output_dir}", *FAST]


def read_csv(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split(",") for line in lines[1:]]


# ---------------------------------------------------------------------- end to end
def test_eval_writes_csv_then_rerun_skips_evaluated_steps(trained, tmp_path):
    output = tmp_path / "eval_result"
    # The authors' command form, with single-dash flags.
    result = run_command([sys.executable, "eval.py", '-config_path=config_files/STORM.yaml', f"-env_name={ENV}",
                          f"-run_name={RUN}", f"-checkpoint_dir={trained}", f"-output_dir={output}", *FAST])
    assert result.returncode == 0, result.stderr[-3000:]
    csv_path = output / f"{RUN}.csv"
    header, rows = read_csv(csv_path)
    assert header == "step,episode_avg_return,episode_std,episode_min,episode_max,episodes"
    assert [int(row[0]) for row in rows] == list(STEPS)
    for _, mean, std, low, high, episodes in rows:
        assert float(low) <= float(mean) <= float(high) and float(std) >= 0 and episodes == "2"
    assert f"{RUN} step 48: return" in result.stdout
    first = csv_path.read_bytes()

    # Again through eval_manager.sh -> evals.sh -> eval.py: the run is found by its name,
    # both steps are already in the CSV, so nothing is evaluated and the file stays as it was.
    result = run_command(["./eval_manager.sh", f"-output_dir={output}", *FAST],
                         env={"PYTHON": sys.executable, "CHECKPOINT_DIR": str(trained)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{RUN}: skipping steps 24, 48, already in {csv_path}" in result.stdout
    assert "nothing to do" in result.stdout
    assert "skipped 259 runs not found" in result.stdout
    assert csv_path.read_bytes() == first


def test_step_evaluates_only_that_checkpoint(trained, tmp_path, capsys):
    code, out, err = eval_main(capsys, *base_args(trained, tmp_path), "-step=24")
    assert code == 0, err
    _, rows = read_csv(tmp_path / f"{RUN}.csv")
    assert [row[0] for row in rows] == ["24"]
    assert "step 24: return" in out and "step 48" not in out


def test_shell_scripts_print_usage():
    for script in ("./evals.sh", "./evals.sh Boxing"):
        result = run_command(script.split())
        assert result.returncode == 2 and "usage: " in result.stderr
    assert "usage: " in run_command(["./eval_manager.sh", "-h"]).stdout


# ---------------------------------------------------------------------- errors
def test_missing_run_lists_the_nearest_runs(trained, tmp_path, capsys):
    code, _, err = eval_main(capsys, *base_args(trained, tmp_path, run="Breakout-STROM-seed_0"))
    assert code == 2
    assert err.startswith("error: no run 'Breakout-STROM-seed_0'") and f"nearest first: {RUN}" in err


def test_missing_step_lists_available_steps(trained, tmp_path, capsys):
    code, _, err = eval_main(capsys, *base_args(trained, tmp_path), "-step=25")
    assert code == 2 and "no weights_25.pt" in err and "available steps: 24, 48" in err


def test_run_without_weights(tmp_path, capsys):
    (tmp_path / "saved_models" / RUN).mkdir(parents=True)
    code, _, err = eval_main(capsys, *base_args(tmp_path / "saved_models", tmp_path))
    assert code == 2 and "holds no weights_<step>.pt files" in err


def test_corrupt_weights_file_is_named(tmp_path, capsys):
    broken = tmp_path / "saved_models" / RUN / "weights_24.pt"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    code, _, err = eval_main(capsys, *base_args(tmp_path / "saved_models", tmp_path))
    assert code == 2 and str(broken) in err and "Traceback" not in err
    assert not (tmp_path / f"{RUN}.csv").exists()


def test_models_are_built_from_the_stored_config_without_retyping_overrides(trained, tmp_path, capsys):
    # The run was trained with +preset=cpu; evaluating it without the preset works, and the
    # keys where the given config differs from the stored one are printed as a warning.
    args = [a for a in base_args(trained, tmp_path) if a != "+preset=cpu"]
    code, out, err = eval_main(capsys, *args, "-step=24")
    assert code == 0, err
    assert "warning:" in err and "evaluating with the stored one" in err
    assert "Models.WorldModel.TransformerHiddenDim: checkpoint 64, given 512" in err
    assert "step 24: return" in out
    # another model config (-config_path GITSTORM): the same, the checkpoint's MLP prior is used
    code, out, err = eval_main(capsys, *base_args(trained, tmp_path, config="GITSTORM"), "-step=48")
    assert code == 0, err
    assert "Models.WorldModel.Prior: checkpoint 'mlp', given 'maskgit'" in err and "step 48: return" in out
    # the config it was trained with: no warning
    code, _, err = eval_main(capsys, *base_args(trained, tmp_path), "-step=24")
    assert code == 0 and "warning" not in err


def test_run_trained_with_bf16_is_evaluated_in_fp32_on_a_cpu(trained, tmp_path, capsys):
    """bf16 autocast leaves the weights in fp32, so a bf16 run's weights file differs from an fp32
    one only in its stored config: this one says MixedPrecision=bf16, as a GPU run's would."""
    weights = torch.load(trained / RUN / "weights_24.pt", weights_only=False)
    weights["config"]["BasicSettings"]["MixedPrecision"] = "bf16"
    (tmp_path / "saved_models" / RUN).mkdir(parents=True)
    torch.save(weights, tmp_path / "saved_models" / RUN / "weights_24.pt")
    code, out, err = eval_main(capsys, *base_args(tmp_path / "saved_models", tmp_path), "-device=cpu")
    assert code == 0, err
    assert "the run trained with bf16 autocast; cpu has no native bf16, so it is evaluated in fp32" in err
    assert "step 24: return" in out


def test_missing_checkpoint_folder_names_the_run(tmp_path, capsys):
    code, _, err = eval_main(capsys, *base_args(tmp_path / "nowhere", tmp_path, run="No-Such-Run"))
    assert code == 2 and "no run 'No-Such-Run'" in err and "does not exist" in err


def test_env_mismatch_and_unknown_env(trained, tmp_path, capsys):
    code, _, err = eval_main(capsys, *base_args(trained, tmp_path, env="ALE/Pong-v5"))
    assert code == 2 and "was trained on 'ALE/Breakout-v5', not -env_name='ALE/Pong-v5'" in err
    code, _, err = eval_main(capsys, *base_args(trained, tmp_path, env="ALE/Breakuot-v5"))
    assert code == 2 and "'ALE/Breakuot-v5'" in err and "ALE/Breakout-v5" in err


# ---------------------------------------------------------------------- evaluate_checkpoint
class ScriptedRewards(gymnasium.vector.VectorWrapper):
    """Hands out reward t + 100 * i at the t-th step of env i (so every return says which
    steps it summed) and ends env i's episode at the steps listed for it; records resets."""

    def __init__(self, env, terminate_at: dict[int, set[int]]):
        super().__init__(env)
        self.terminate_at = terminate_at
        self.t = 0
        self.resets = []

    def reset(self, *, seed=None, options=None):
        self.resets.append((self.t, dict(options or {})))   # the vector env pops reset_mask
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        obs, _, terminated, truncated, info = self.env.step(actions)
        self.t += 1
        reward = self.t + 100.0 * np.arange(self.num_envs)
        terminated = terminated | np.array([self.t in self.terminate_at.get(i, ()) for i in range(self.num_envs)])
        return obs, reward, terminated, truncated, info


def test_evaluate_checkpoint_counts_a_fixed_share_per_env(monkeypatch):
    cfg = compose_config("STORM", ["+preset=cpu", f"BasicSettings.env_name={ENV}"])
    world_model, agent = build_models(cfg, 4, True, torch.device("cpu"), False)
    make_vector_env, made = evaluation.make_vector_env, []

    def make_scripted(*args, **kwargs):
        made.append(ScriptedRewards(make_vector_env(*args, **kwargs), terminate_at={1: {3}}))
        return made[-1]

    monkeypatch.setattr(evaluation, "make_vector_env", make_scripted)
    finished = []
    models = {"world_model": world_model, "agent": agent}
    returns = evaluation.evaluate_checkpoint(models, cfg, make_actor, ENV, episodes=3, num_envs=2, seed=5,
                                             max_steps=5, on_episode_end=finished.append)
    # Env 0 owes 2 episodes: steps 1-5 and 6-10, both cut by max_steps. Env 1 owes 1: its
    # game ends at step 3; its cut at step 8 comes after its share and is not counted.
    assert sorted(returns.tolist()) == [1 + 2 + 3 + 4 + 5, 6 + 7 + 8 + 9 + 10, 101 + 102 + 103]
    assert finished == returns.tolist()
    env = made[0]
    assert env.t == 10
    assert [t for t, _ in env.resets] == [0, 5]
    assert env.resets[1][1]["reset_mask"].tolist() == [True, False]   # only env 0 restarts after its cut


def test_evaluate_checkpoint_rejects_more_envs_than_episodes():
    cfg = compose_config("STORM", ["+preset=cpu", f"BasicSettings.env_name={ENV}"])
    world_model, agent = build_models(cfg, 4, True, torch.device("cpu"), False)
    with pytest.raises(ValueError, match="num_envs=3: expected between 1 and episodes=2"):
        evaluation.evaluate_checkpoint({"world_model": world_model, "agent": agent}, cfg, make_actor, ENV,
                                       episodes=2, num_envs=3, seed=0)
