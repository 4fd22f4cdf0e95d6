"""train.py end to end through its command line: a dry run per algorithm, resuming after
the process is killed with nothing lost and nothing duplicated, and stopping at a signal
with a run that, resumed, is the uninterrupted run bit for bit."""
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import numpy as np
import pytest
import torch

from preemption import REQUEUE_EXIT_STATUS

REPO = Path(__file__).resolve().parents[1]
TINY = ["+preset=cpu", "JointTrainAgent.BufferWarmUp=32", "JointTrainAgent.BatchSize=2",
        "JointTrainAgent.BatchLength=8", "JointTrainAgent.ImagineBatchSize=8",
        "JointTrainAgent.ImagineContextLength=4", "JointTrainAgent.ImagineBatchLength=4",
        "JointTrainAgent.LogEverySteps=10", "JointTrainAgent.VideoEverySteps=40"]


def train_command(tmp_path, *overrides):
    return [sys.executable, "train.py", *TINY, f"BasicSettings.RunsDir={tmp_path}/runs",
            f"BasicSettings.CheckpointDir={tmp_path}/saved_models", *overrides]


def run(command, **kwargs):
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def steps_of(folder: Path, pattern: str) -> list[int]:
    return sorted(int(p.stem.split("_")[-1]) for p in folder.glob(pattern))


class Stopped(NamedTuple):
    step: int                 # of the newest checkpoint
    checkpoint: dict
    buffer: dict              # its replay buffer file's contents
    returncode: int
    stderr: str


def stop_after_checkpoint(command, folder: Path, first: int, final: int, signals=(signal.SIGKILL,),
                          timeout: float = 500) -> Stopped:
    """Start `command`, send it `signals` one after the other as soon as checkpoint_<first>.pt
    exists in `folder`, and wait for it to end; the stop must come before the run's last
    checkpoint, checkpoint_<final>.pt."""
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while not (folder / f"checkpoint_{first}.pt").exists():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, f"no checkpoint_{first}.pt within {timeout} s"
        time.sleep(0.05)
    for signum in signals:
        process.send_signal(signum)
    stderr = process.communicate(timeout=timeout)[1]
    step = steps_of(folder, "checkpoint_*.pt")[-1]
    assert first <= step < final, "the run must be stopped before it finished"
    return Stopped(step, torch.load(folder / f"checkpoint_{step}.pt", weights_only=False),
                   torch.load(folder / f"replay_buffer_{step}.pt", weights_only=True), process.returncode, stderr)


def differences(a, b, path: str = "") -> list[str]:
    """Where two checkpoints (nested dicts, lists, tensors, arrays, numbers) are not bit-identical."""
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            return [f"{path}: keys differ"]
        return [found for key in a for found in differences(a[key], b[key], f"{path}.{key}")]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f"{path}: lengths differ"]
        return [found for i, (x, y) in enumerate(zip(a, b)) for found in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        same = isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        same = isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        same = isinstance(b, float) and math.isnan(b)
    else:
        same = a == b
    return [] if same else [path]


def scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run folder as (step, value) pairs, but the wall times (time/*)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(event.step, event.value) for event in events.Scalars(tag)]
            for tag in events.Tags()["scalars"] if not tag.startswith("time/")}


def assert_same_run(tmp_path, whole: str, stopped: str, step: int) -> dict:
    """The runs `whole` and `stopped` end at `step` bit-identical: every checkpoint entry but the
    config (whose run name and folders differ), the replay buffer and the TensorBoard scalars."""
    folders = [tmp_path / "saved_models" / name for name in (whole, stopped)]
    checkpoints = [torch.load(folder / f"checkpoint_{step}.pt", weights_only=False) for folder in folders]
    for checkpoint in checkpoints:
        checkpoint.pop("config")
    assert differences(*checkpoints) == []
    buffers = [torch.load(folder / f"replay_buffer_{step}.pt", weights_only=True) for folder in folders]
    assert differences(*buffers) == []
    assert scalars(tmp_path / "runs" / whole) == scalars(tmp_path / "runs" / stopped)
    return checkpoints[0]


@pytest.mark.parametrize("config_args", [
    [],                                                              # STORM (default config)
    ["BasicSettings.config_path=config_files/GITSTORM.yaml"],       # GIT-STORM, the authors' form
])
def test_cli_dry_run_writes_events_and_checkpoints(tmp_path, config_args):
    result = run(train_command(tmp_path, *config_args, "JointTrainAgent.SampleMaxSteps=60",
                               "JointTrainAgent.SaveEverySteps=30", "BasicSettings.n=dry"))
    assert "device cpu, precision fp32" in result.stdout     # the first line says what the run computes in
    checkpoints = tmp_path / "saved_models" / "dry"
    assert steps_of(checkpoints, "weights_*.pt") == [30, 60]
    assert steps_of(checkpoints, "checkpoint_*.pt") == [30, 60]
    assert steps_of(checkpoints, "replay_buffer_*.pt") == [60]       # only the newest keeps its buffer
    assert not list(checkpoints.glob("*.tmp"))
    events = list((tmp_path / "runs" / "dry").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(tmp_path / "runs" / "dry"))
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    for tag in ("world_model/reconstruction_loss", "world_model/dynamics_kl", "world_model/prior_perplexity",
                "world_model/sampling_kl", "world_model/sampling_perplexity",
                "agent/policy_loss", "agent/entropy", "agent/return_scale", "time/env_steps_per_second",
                "time/acting_ms_per_env_step", "time/env_ms_per_env_step", "time/world_model_update_ms_per_env_step",
                "time/imagination_and_agent_update_ms_per_env_step", "health/skipped_updates"):
        assert tag in scalars
    # the like-for-like prior figures: one value per log, as every other figure
    assert len(accumulator.Scalars("world_model/sampling_kl")) == len(accumulator.Scalars("world_model/dynamics_kl"))

    weights = torch.load(checkpoints / "weights_60.pt", weights_only=False)
    expected_prior = "maskgit" if config_args else "mlp"
    assert weights["config"]["Models"]["WorldModel"]["Prior"] == expected_prior
    assert weights["step"] == 60


def test_finished_run_says_so_and_fresh_moves_it_aside(tmp_path):
    # the tests' 16-step pixel game, so that episodes finish and get logged
    command = train_command(tmp_path, "JointTrainAgent.SampleMaxSteps=40", "JointTrainAgent.SaveEverySteps=40",
                            "BasicSettings.env_name=gym/tests.pixel_games:PixelSide-v0", "BasicSettings.n=again")
    run(command)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    accumulator = EventAccumulator(str(tmp_path / "runs" / "again"))
    accumulator.Reload()
    lengths = [event.value for event in accumulator.Scalars("episode/length")]
    assert lengths == [16.0, 16.0]        # two whole episodes in 40 steps
    assert len(accumulator.Scalars("episode/return")) == 2
    second = run(command)
    assert "already reached 40 steps" in second.stdout
    run(command + ["BasicSettings.Resume=fresh"])
    assert len(list((tmp_path / "saved_models").glob("again.old-*"))) == 1
    assert steps_of(tmp_path / "saved_models" / "again", "weights_*.pt") == [40]


def test_resume_with_another_model_config_is_refused(tmp_path):
    run(train_command(tmp_path, "JointTrainAgent.SampleMaxSteps=40", "JointTrainAgent.SaveEverySteps=40",
                      "BasicSettings.n=mixed"))
    result = subprocess.run(train_command(tmp_path, "JointTrainAgent.SampleMaxSteps=80", "BasicSettings.n=mixed",
                                          "Models.WorldModel.Prior=maskgit"),
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "Models.WorldModel.Prior: checkpoint 'mlp', given 'maskgit'" in result.stderr


def test_non_finite_updates_are_skipped_then_stop_the_run_naming_step_and_loss(tmp_path):
    from families import compose_config
    from run_trainer import NonFiniteLossError
    from families.storm.trainer import Trainer

    cfg = compose_config("STORM", TINY + [f"BasicSettings.RunsDir={tmp_path}/runs", "BasicSettings.n=nan",
                                          f"BasicSettings.CheckpointDir={tmp_path}/saved_models",
                                          "JointTrainAgent.MaxNonFiniteUpdates=3"])
    trainer = Trainer(cfg)
    trainer.step = 1234
    device = trainer.device   # a batch as the replay buffer gives it: on the trainer's device
    obs = torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8, device=device)
    actions = torch.zeros(2, 8, dtype=torch.long, device=device)
    rewards = torch.full((2, 8), float("nan"), device=device)
    zeros = torch.zeros(2, 8, device=device)
    before = [p.detach().clone() for p in trainer.world_model.parameters()]
    metrics, finite = trainer.world_model.update(obs, actions, rewards, zeros)
    assert not bool(finite)
    assert all(torch.equal(b, p) for b, p in zip(before, trainer.world_model.parameters()))

    # counted on the device at every update, looked at when logging
    pending = {}
    trainer.track(metrics, finite, pending)
    trainer.track(metrics, finite, pending)
    assert len(pending["health/skipped_updates"]) == 2
    trainer.check_health(pending)                     # 2 in a row: below the limit of 3
    good_metrics, good = trainer.world_model.update(obs, actions, zeros, zeros)
    trainer.track(good_metrics, good, pending)        # a finite update ends the run of bad ones ...
    trainer.track(metrics, finite, pending)
    trainer.check_health(pending)                     # ... so the longest run is still 2
    trainer.track(metrics, finite, pending)
    trainer.track(metrics, finite, pending)
    with pytest.raises(NonFiniteLossError, match=r"step 1234: 3 non-finite updates in a row.*world_model/reward_loss"):
        trainer.check_health(pending)


def test_hydra_multirun_trains_one_run_per_seed(tmp_path):
    command = train_command(tmp_path, "BasicSettings.env_name=gym/tests.pixel_games:PixelSide-v0",
                            "BasicSettings.Seed=0,1", "JointTrainAgent.SampleMaxSteps=40",
                            f"hydra.sweep.dir={tmp_path}/multirun")
    run(command[:2] + ["-m"] + command[2:])
    for seed in (0, 1):
        assert steps_of(tmp_path / "saved_models" / f"PixelSide-v0-STORM-seed_{seed}", "weights_*.pt") == [40]


def test_resume_after_kill_once_the_buffer_wrapped_loses_and_duplicates_nothing(tmp_path):
    """BufferMaxLength (48) < SampleMaxSteps (160): a run killed after the buffer wrapped resumes
    from its checkpoint with the buffer's contents and write position, the step counter and
    the optimiser states, and finishes; re-running the finished run says it is done."""
    from families import compose_config
    from families.storm.trainer import Trainer

    overrides = ["JointTrainAgent.SampleMaxSteps=160", "JointTrainAgent.SaveEverySteps=40",
                 "JointTrainAgent.BufferMaxLength=48", "JointTrainAgent.KeepCheckpoints=5",
                 "JointTrainAgent.VideoEverySteps=0", "BasicSettings.n=resume"]
    command = train_command(tmp_path, *overrides)
    folder = tmp_path / "saved_models" / "resume"
    killed_at, saved, saved_buffer, *_ = stop_after_checkpoint(command, folder, 80, 160)
    assert saved["step"] == killed_at and saved_buffer["num_appended"] == killed_at > 48   # wrapped
    cfg = compose_config("STORM", TINY + overrides + [f"BasicSettings.RunsDir={tmp_path}/runs",
                                                      f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    trainer = Trainer(cfg)
    trainer.restore(folder / f"checkpoint_{killed_at}.pt")
    assert trainer.step == killed_at and len(trainer.buffer) == 48            # len() stops at capacity
    assert trainer.buffer.num_appended == killed_at and trainer.buffer.head == killed_at % 48
    for key in ("obs", "action", "reward", "termination"):
        assert torch.equal(getattr(trainer.buffer, key), saved_buffer[key]), key
    trainer.envs.close()

    resumed = run(command)
    assert f"Resuming run resume from step {killed_at}" in resumed.stdout
    final = torch.load(folder / "checkpoint_160.pt", weights_only=False)
    final_buffer = torch.load(folder / "replay_buffer_160.pt", weights_only=True)
    assert final["step"] == 160 and final_buffer["num_appended"] == 160
    # Optimiser state continues: one world-model and one agent update per step after the warm-up.
    warmup = 32
    for name in ("world_model_optimizer", "agent_optimizer"):
        before = saved[name]["state"][0]["step"].item()
        after = final[name]["state"][0]["step"].item()
        assert before == killed_at - warmup, name
        assert after == before + (160 - killed_at), name
    again = run(command)
    assert "already reached 160 steps" in again.stdout


def test_config_error_is_one_clear_line_and_exit_status_2(tmp_path):
    result = subprocess.run(train_command(tmp_path, "Models.WorldModel.Prior=transformer"), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "error: Models.WorldModel.Prior='transformer': expected one of mlp, maskgit" in result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr


def test_videos_and_sampling_figures_do_not_change_the_training_random_stream(tmp_path):
    from families import compose_config
    from families.storm.trainer import Trainer
    from torch.utils.tensorboard import SummaryWriter

    cfg = compose_config("STORM", TINY + [f"BasicSettings.RunsDir={tmp_path}/runs", "BasicSettings.n=video",
                                          f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    trainer = Trainer(cfg)
    obs = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    for _ in range(40):
        trainer.buffer.append(obs, torch.zeros(1, dtype=torch.long), torch.zeros(1), torch.zeros(1))
    batch = trainer.buffer.sample(2, 8)
    before = torch.get_rng_state()
    # videos use the eager rollout: the compiled one (BasicSettings.Compile) would compile again
    compiled = mock.patch.object(trainer.world_model, "rollout", side_effect=AssertionError("compiled rollout"))
    with SummaryWriter(str(tmp_path / "runs" / "video")) as writer, compiled:
        trainer.log_video(writer)
    figures = trainer.sampling_figures(batch)
    assert torch.equal(torch.get_rng_state(), before)
    assert figures["world_model/sampling_kl"][0] >= 0 and figures["world_model/sampling_perplexity"][0] >= 1
    trainer.envs.close()


PIXEL_SIDE = "gym/tests.pixel_games:PixelSide-v0"   # 16-step episodes: the signal comes mid-episode


@pytest.mark.parametrize("config_args, signals", [
    ([], (signal.SIGTERM,)),
    (["BasicSettings.config_path=config_files/GITSTORM.yaml"], (signal.SIGUSR2, signal.SIGUSR2)),  # 2nd while stopping
], ids=["STORM", "GITSTORM"])
def test_signal_saves_the_step_and_the_resumed_run_is_the_uninterrupted_run(tmp_path, config_args, signals):
    """A run signalled mid-run (between two periodic saves, during the updates) saves a full
    checkpoint of the step it was in and exits with the requeue status; the same command then
    resumes it and it ends bit-identical to an uninterrupted run of the same seed: weights,
    optimiser states, buffer, counters, envs, RNG and every TensorBoard scalar but wall times.
    So no step is lost or redone, and the same seed gives the same run."""
    overrides = [*config_args, f"BasicSettings.env_name={PIXEL_SIDE}", "JointTrainAgent.SampleMaxSteps=48",
                 "JointTrainAgent.SaveEverySteps=24", "JointTrainAgent.VideoEverySteps=0"]
    run(train_command(tmp_path, *overrides, "BasicSettings.n=whole"))
    command = train_command(tmp_path, *overrides, "BasicSettings.n=stopped")
    stopped = stop_after_checkpoint(command, tmp_path / "saved_models" / "stopped", 24, 48, signals)
    assert stopped.returncode == REQUEUE_EXIT_STATUS, stopped.stderr
    assert f"{signals[0].name} received: finishing this step" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.checkpoint["step"] == stopped.buffer["num_appended"] == stopped.step

    resumed = run(command)
    assert f"Resuming run stopped from step {stopped.step}" in resumed.stdout
    final = assert_same_run(tmp_path, "whole", "stopped", 48)
    warmup = 32   # TINY's BufferWarmUp: one world-model and one agent update per step after it
    for name in ("world_model_optimizer", "agent_optimizer"):
        assert final[name]["state"][0]["step"].item() == 48 - warmup, name
