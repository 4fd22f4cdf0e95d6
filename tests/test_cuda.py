"""What only a CUDA GPU can show (marked `cuda`: skipped without one; `pytest -m cuda` runs them,
and so does the device check, tools/benchmarks/gpu_check.py), cheapest first:

  * a bf16 world-model update is finite and close to the fp32 one;
  * a checkpoint trained on CPU evaluates on CUDA;
  * the compiled and the graph-captured updates (BasicSettings.Compile=true, reduce-overhead)
    give the eager figures step by step for the same random numbers, imagination included;
  * train.py runs 200 steps on CUDA, eager and graph-captured, and writes its checkpoints.
"""
import subprocess
import sys

import pytest
import torch

from agents import build_models
from families import compose_config
from test_train import REPO, TINY, run, steps_of, train_command
from test_update_steps import HORIZON, batches, train
from update_steps import UpdateSteps

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
SIZES = [*TINY, "BasicSettings.Device=cuda"]   # the tests' tiny models (tests/test_train.py)


@pytest.fixture
def full_fp32():
    """No TF32 in matmuls and convolutions: the modes are compared in one precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_models(config_name, *overrides, bf16=False):
    cfg = compose_config(config_name, [*SIZES, *overrides])
    torch.manual_seed(0)
    return build_models(cfg, 18, True, CUDA, bf16)


def cuda_batches(count):
    # TINY's world-model batch: 2 x 8; the imagination context is its first 4 steps (train() in test_update_steps)
    return [tuple(x.to(CUDA) for x in batch) for batch in batches(count, batch=2, length=8)]


@pytest.mark.parametrize("config_name", ["STORM", "GITSTORM"])
def test_bf16_world_model_update_is_finite_and_close_to_fp32(config_name):
    """Paper size, one batch of 16 x 64, two updates from the same weights and random numbers:
    every bf16 figure finite, and the losses within 5% of fp32's (bf16 keeps 8 significant bits,
    4e-3 per rounding; the sampled latents may differ where two classes are nearly tied)."""
    cfg = compose_config(config_name, ["BasicSettings.Device=cuda"])
    (obs, actions, rewards, terminations), = [tuple(x.to(CUDA) for x in batch) for batch in batches(1, 16, 64)]
    figures = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        world_model, _ = build_models(cfg, 18, True, CUDA, bf16)
        torch.manual_seed(1)
        figures[bf16] = [world_model.update(obs, actions, rewards, terminations) for _ in range(2)]
    for (fp32, _), (bf16, finite) in zip(figures[False], figures[True]):
        assert bool(finite) and all(bool(torch.isfinite(value)) for value in bf16.values())
        for key in ("total_loss", "reconstruction_loss", "reward_loss", "termination_loss", "dynamics_kl"):
            key = f"world_model/{key}"
            torch.testing.assert_close(bf16[key].float(), fp32[key].float(), rtol=5e-2, atol=1e-3, msg=key)


def test_cpu_trained_checkpoint_evaluates_on_cuda(tmp_path):
    run(train_command(tmp_path, "BasicSettings.Device=cpu", "JointTrainAgent.SampleMaxSteps=40",
                      "JointTrainAgent.SaveEverySteps=40", "BasicSettings.n=cpu_run"))
    result = run([sys.executable, "eval.py", "-config_path=config_files/STORM.yaml", "-env_name=ALE/Boxing-v5",
                  "-run_name=cpu_run", f"-checkpoint_dir={tmp_path}/saved_models", f"-output_dir={tmp_path}/eval",
                  "-device=cuda", "-episodes=2", "-num_envs=2", "-max_steps=30", "+preset=cpu"])
    rows = (tmp_path / "eval" / "cpu_run.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("40,"), result.stdout


@pytest.mark.parametrize("config_name", ["STORM", "GITSTORM"])
def test_compiled_and_graph_captured_updates_equal_eager(config_name, full_fp32, monkeypatch):
    """Six steps (three eager warm-up calls, the capture, two replays) of a world-model update and
    an imagination + agent update; every figure of every step (the imagined rewards, terminations,
    values and λ-returns among them) within rtol 1e-4, atol 1e-5 of eager, fp32: what inductor's
    reordered reductions leave (tests/test_agent.py holds the compiled agent to the same); the
    random numbers are the same because compiled code draws through the eager generator
    (fallback_random) and a graph replay advances it as much as one eager call."""
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config, "fallback_random", True)
    data = cuda_batches(6)
    kept = {mode: train(UpdateSteps(*cuda_models(config_name), HORIZON, mode), data)
            for mode in ("eager", "compiled", "reduce-overhead")}
    for mode in ("compiled", "reduce-overhead"):
        for step, (expected, found) in enumerate(zip(kept["eager"], kept[mode])):
            assert bool(found["finite"])
            for key, value in expected.items():
                if key != "finite":
                    torch.testing.assert_close(found[key].float(), value.float(), rtol=1e-4, atol=1e-5,
                                               msg=f"{mode}, step {step}, {key}")


@pytest.mark.parametrize("setting", ["false", "reduce-overhead"])
def test_train_py_runs_200_steps_on_cuda_and_writes_checkpoints(tmp_path, setting):
    """168 updates of each kind after the 32-step warm-up (graph mode: 3 warm-up calls, the
    capture, 164 replays, and the videos at steps 40-200 in between), then the files."""
    result = run(train_command(tmp_path, "BasicSettings.Device=cuda", f"BasicSettings.Compile={setting}",
                               "JointTrainAgent.SampleMaxSteps=200", "JointTrainAgent.SaveEverySteps=100",
                               "BasicSettings.n=gpu_run"))
    mode = "eager" if setting == "false" else setting
    assert "device cuda" in result.stdout and f"updates {mode}" in result.stdout
    folder = tmp_path / "saved_models" / "gpu_run"
    assert steps_of(folder, "checkpoint_*.pt") == [100, 200] and steps_of(folder, "weights_*.pt") == [100, 200]
    checkpoint = torch.load(folder / "checkpoint_200.pt", weights_only=False, map_location="cpu")
    assert checkpoint["step"] == 200
    assert all(bool(torch.isfinite(value).all()) for value in checkpoint["world_model"].values()
               if value.is_floating_point())
    # the run folder can be resumed on CUDA: a longer budget continues from step 200
    resumed = subprocess.run(train_command(tmp_path, "BasicSettings.Device=cuda", f"BasicSettings.Compile={setting}",
                                           "JointTrainAgent.SampleMaxSteps=220", "JointTrainAgent.SaveEverySteps=100",
                                           "BasicSettings.n=gpu_run"),
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "from step 200" in resumed.stdout, resumed.stderr[-3000:]
    assert steps_of(folder, "checkpoint_*.pt")[-1] == 220
