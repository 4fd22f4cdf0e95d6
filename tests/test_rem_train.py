"""REM through the real command line (train.py runs families/rem/trainer.py): the epoch
schedule, events, checkpoints, resuming after a kill with nothing lost, and eval.py's CSV.

Runs on the tests' pixel game (episodes of 16 steps) with the rem_cpu preset and a short
schedule: 16 steps collected per epoch; the tokenizer trains after epoch 0, the world model
after epoch 1, the controller after epoch 2."""
import csv
import sys

import torch

import signal

from preemption import REQUEUE_EXIT_STATUS
from tests.test_train import assert_same_run, run, steps_of, stop_after_checkpoint

PIXEL_SIDE = "gym/tests.pixel_games:PixelSide-v0"
STEPS_PER_EPOCH = 16
UPDATES = {"tokenizer": (0, 3), "world_model": (1, 2), "controller": (2, 1)}   # (start after epoch, steps per epoch)
TINY = ["--config-name", "REM", "+preset=rem_cpu", f"BasicSettings.env_name={PIXEL_SIDE}",
        "BasicSettings.AtariProtocol=storm", f"REMTrain.CollectStepsPerEpoch={STEPS_PER_EPOCH}",
        "REMTrain.TokenizerBatchSize=8", "REMTrain.WorldModelBatchSize=2", "REMTrain.ControllerBatchSize=4",
        "REMTrain.EvalEpisodes=2", "REMTrain.EvalNumEnvs=2", "REMTrain.FinalEvalEpisodes=2",
        "REMTrain.SaveEveryEpochs=1", "REMTrain.KeepCheckpoints=10"]
for name, (start, steps) in UPDATES.items():
    key = "".join(part.capitalize() for part in name.split("_"))
    TINY += [f"REMTrain.{key}StartAfterEpochs={start}", f"REMTrain.{key}StepsPerEpoch={steps}"]


def train_command(tmp_path, *overrides):
    return [sys.executable, "train.py", *TINY, f"BasicSettings.RunsDir={tmp_path}/runs",
            f"BasicSettings.CheckpointDir={tmp_path}/saved_models", *overrides]


def optimizer_steps(checkpoint: dict, name: str) -> int:
    """Updates taken by a component's AdamW (0 before its first update)."""
    state = checkpoint[f"{name}_optimizer"]["state"]
    return max((int(s["step"]) for s in state.values()), default=0)


def expected_updates(name: str, epochs: int) -> int:
    start_after, steps = UPDATES[name]
    return steps * max(0, epochs - start_after)


def test_rem_cli_follows_the_epoch_schedule_and_writes_events_checkpoints_and_eval_csv(tmp_path):
    # 5 epochs; collection stops after epoch 4, so epoch 5 trains only (and overwrites step 64's files)
    run(train_command(tmp_path, "REMTrain.Epochs=5", "REMTrain.CollectStopAfterEpochs=4",
                      "REMTrain.EvalEveryEpochs=5", "BasicSettings.n=dry"))
    folder = tmp_path / "saved_models" / "dry"
    assert steps_of(folder, "checkpoint_*.pt") == [16, 32, 48, 64]
    assert steps_of(folder, "weights_*.pt") == [16, 32, 48, 64]
    assert steps_of(folder, "replay_buffer_*.pt") == [64]
    for step, epoch in ((16, 1), (32, 2), (48, 3), (64, 5)):
        checkpoint = torch.load(folder / f"checkpoint_{step}.pt", weights_only=False)
        assert (checkpoint["epoch"], checkpoint["step"]) == (epoch, step)
        # which component trained in which epoch, and how often: V after epoch 0, M after 1, C after 2
        for name in UPDATES:
            assert optimizer_steps(checkpoint, name) == expected_updates(name, epoch), (name, epoch)
    buffer = torch.load(folder / "replay_buffer_64.pt", weights_only=True)
    assert buffer["num_appended"] == 64
    # PixelSide episodes last 16 steps: every 16th stored step ends one
    assert buffer["termination"][0].nonzero().squeeze(1).tolist() == [15, 31, 47, 63]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tmp_path / "runs" / "dry"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("tokenizer/reconstruction_loss", "tokenizer/codebook_perplexity", "world_model/observation_loss",
                "world_model/reward_loss", "controller/policy_loss", "controller/value_loss",
                "controller/imagined_return", "episode/return", "eval/return", "progress/env_steps",
                "time/collect_seconds_per_epoch", "time/controller_update_seconds_per_epoch",
                "health/skipped_updates"):
        assert tag in scalars, tag
    # the x-axis is the schedule step: 16 per epoch, also after collection stopped
    assert [e.step for e in events.Scalars("progress/env_steps")] == [16, 32, 48, 64, 80]
    assert [e.value for e in events.Scalars("progress/env_steps")] == [16, 32, 48, 64, 64]
    assert [e.step for e in events.Scalars("eval/return")] == [80]

    out = tmp_path / "eval_result"
    evaluated = run([sys.executable, "eval.py", "-config_path", "config_files/REM.yaml", "-env_name", PIXEL_SIDE,
                     "-run_name", "dry", "-checkpoint_dir", str(tmp_path / "saved_models"), "-output_dir", str(out),
                     "-episodes", "2", "-step", "64", "BasicSettings.AtariProtocol=storm"])
    assert "warning" in evaluated.stderr   # trained with the preset and overrides: the stored config is used
    with open(out / "dry.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["step"] for row in rows] == ["64"] and rows[0]["episodes"] == "2"
    assert -16 <= float(rows[0]["episode_avg_return"]) <= 16


def test_rem_resume_after_kill_loses_and_duplicates_nothing(tmp_path):
    overrides = ["REMTrain.Epochs=6", "REMTrain.EvalEveryEpochs=0", "BasicSettings.n=resume"]
    command = train_command(tmp_path, *overrides)
    folder = tmp_path / "saved_models" / "resume"
    killed_at, saved, saved_buffer, *_ = stop_after_checkpoint(command, folder, 48, 96)
    assert saved["epoch"] == killed_at // STEPS_PER_EPOCH and saved_buffer["num_appended"] == killed_at

    resumed = run(command)
    assert f"Resuming run resume from step {killed_at}" in resumed.stdout
    final = torch.load(folder / "checkpoint_96.pt", weights_only=False)
    final_buffer = torch.load(folder / "replay_buffer_96.pt", weights_only=True)
    assert (final["epoch"], final["step"]) == (6, 96) and final_buffer["num_appended"] == 96
    # the stored steps before the kill are kept as they were, and the envs continued their episodes
    for key in ("obs", "action", "reward", "termination"):
        assert torch.equal(final_buffer[key][:, :killed_at], saved_buffer[key]), key
    assert final["episode_cuts"] == []
    # every component's optimiser continued: the updates add up to an uninterrupted run's
    for name in UPDATES:
        assert optimizer_steps(saved, name) == expected_updates(name, killed_at // STEPS_PER_EPOCH), name
        assert optimizer_steps(final, name) == expected_updates(name, 6), name
    again = run(command)
    assert "already reached epoch 6 at 96 steps" in again.stdout


def test_rem_signal_saves_inside_the_epoch_and_the_resumed_run_is_the_uninterrupted_run(tmp_path):
    """SIGUSR1 during epoch 2 or 3 (collecting or updating): the checkpoint records how far that
    epoch got, and the resumed run ends bit-identical to an uninterrupted one of the same seed
    (weights, optimisers, buffer, counters, envs, RNG, TensorBoard scalars, the final evaluation)."""
    overrides = ["REMTrain.Epochs=3", "REMTrain.EvalEveryEpochs=3"]
    run(train_command(tmp_path, *overrides, "BasicSettings.n=whole"))
    command = train_command(tmp_path, *overrides, "BasicSettings.n=stopped")
    stopped = stop_after_checkpoint(command, tmp_path / "saved_models" / "stopped", 16, 48, (signal.SIGUSR1,))
    assert stopped.returncode == REQUEUE_EXIT_STATUS, stopped.stderr
    position = stopped.checkpoint["epoch"], stopped.checkpoint["epoch_done"]   # epochs done, and how far the next got
    assert stopped.step == position[0] * STEPS_PER_EPOCH + position[1].get("collect", 0), position

    resumed = run(command)
    assert f"Resuming run stopped from step {stopped.step}" in resumed.stdout
    final = assert_same_run(tmp_path, "whole", "stopped", 48)
    for name in UPDATES:
        assert optimizer_steps(final, name) == expected_updates(name, 3), name
