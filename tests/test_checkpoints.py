"""What a run does when its checkpoint files meet trouble: a save that fails at any of its
writes (full disk, I/O error, permission), too little free space before the run, corrupt or
missing pieces of a run folder, a second stop signal during the save; and the RNG state of
the run's own CUDA device."""
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import utils
from preemption import REQUEUE_EXIT_STATUS, StopSignals
from tests.test_train import PIXEL_SIDE, REPO, TINY, run, train_command

# 20 steps within TINY's warm-up (32): no updates, a save at 10 and one at 20
SHORT = [f"BasicSettings.env_name={PIXEL_SIDE}", "JointTrainAgent.SampleMaxSteps=20",
         "JointTrainAgent.SaveEverySteps=10", "BasicSettings.n=disk"]
STEP_10 = ("checkpoint_10.pt", "replay_buffer_10.pt", "weights_10.pt")


def folder_contents(folder) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def failing_at(monkeypatch, fault: str, write: int) -> None:
    """Make the `write`-th file of the next save fail: ENOSPC after writing a few bytes, EIO when
    syncing it to disk, or EACCES when creating it."""
    calls = [0]

    def failing(real, fail_on_call, error):
        def replacement(*args, **kwargs):
            calls[0] += 1
            if calls[0] == fail_on_call:
                if fault == "ENOSPC":
                    args[1].write(b"half a file")
                raise error
            return real(*args, **kwargs)
        return replacement

    error = OSError(getattr(errno, fault), os.strerror(getattr(errno, fault)))
    if fault == "ENOSPC":
        monkeypatch.setattr(torch, "save", failing(torch.save, write, error))
    elif fault == "EIO":   # each file is synced, then its folder
        monkeypatch.setattr(os, "fsync", failing(os.fsync, 2 * write - 1, error))
    else:
        monkeypatch.setattr(tempfile, "mkstemp", failing(tempfile.mkstemp, write, error))


def test_a_failed_save_at_each_write_keeps_the_previous_checkpoint_and_says_what_to_free(tmp_path, monkeypatch):
    """The save of a step writes the buffer, the weights, then the checkpoint. Through train.py
    (tests/failing_writes.py: its 4th torch.save, step 20's buffer, fails with ENOSPC): exit
    status 1 and one line naming the folder and the space a save needs. Then every write failing
    in turn with ENOSPC, EIO or EACCES: the same message, and step 10's files stay byte for byte,
    with no temporary or half-written files; the same command afterwards resumes and finishes."""
    from families import compose_config
    from run_trainer import SaveError
    from families.storm.trainer import Trainer

    command = train_command(tmp_path, *SHORT)
    folder = tmp_path / "saved_models" / "disk"
    failing = [sys.executable, "tests/failing_writes.py", "4", "ENOSPC", *command[1:]]
    result = subprocess.run(failing, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    expected = (f"could not save step 20 in {folder}: {{reason}}; checkpoint_10.pt, its buffer and weights files "
                "are intact. A save needs about ")
    message = one_error_line(result.stderr)
    assert message.startswith("error: " + expected.format(reason="No space left on device"))
    assert "are free" in message and message.endswith("re-run the same command to resume")
    kept = folder_contents(folder)
    assert tuple(kept) == STEP_10
    umask = os.umask(0)
    os.umask(umask)
    assert {(folder / name).stat().st_mode & 0o777 for name in kept} == {0o666 & ~umask}   # open()'s, not mkstemp's 0600

    cfg = compose_config("STORM", TINY + SHORT + [f"BasicSettings.RunsDir={tmp_path}/runs",
                                                  f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    trainer = Trainer(cfg)
    trainer.restore(folder / "checkpoint_10.pt")
    trainer.start_envs()
    trainer.step = 20
    for fault in ("ENOSPC", "EIO", "EACCES"):
        for write in (1, 2, 3):
            with monkeypatch.context() as patch:
                failing_at(patch, fault, write)
                with pytest.raises(SaveError) as raised:
                    trainer.save()
            assert str(raised.value).startswith(expected.format(reason=os.strerror(getattr(errno, fault))))
            assert "\n" not in str(raised.value)
            assert folder_contents(folder) == kept, (fault, write)
    trainer.envs.close()
    resumed = run(command)
    assert "Resuming run disk from step 10" in resumed.stdout
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint_10.pt", "checkpoint_20.pt", "replay_buffer_20.pt",
                                                       "weights_10.pt", "weights_20.pt"]


def test_too_little_free_space_is_said_before_the_run_starts(tmp_path, monkeypatch):
    """Two full buffer files (a save writes the new one before removing the old) must fit: the
    warning names the folder and the sizes. TINY's buffer: 10,000 steps x (64 x 64 x 3 bytes
    + 8-byte action + 4 + 4) = 123.0 MB at capacity."""
    from families import compose_config
    from families.storm.trainer import Trainer

    cfg = compose_config("STORM", TINY + SHORT + [f"BasicSettings.RunsDir={tmp_path}/runs",
                                                  f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    trainer = Trainer(cfg)
    trainer.envs.close()
    assert trainer.buffer.file_bytes(full=True) == 10_000 * (64 * 64 * 3 + 8 + 4 + 4)
    assert trainer.free_space_warning() is None                      # this machine has room
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10**8))
    warning = trainer.free_space_warning()
    assert warning.startswith(f"warning: {tmp_path}/saved_models/disk has 100.0 MB free, but saving this run needs ")
    assert "(two buffer files of 123.0 MB during a save)" in warning and "\n" not in warning


def test_deterministic_setting_turns_on_deterministic_kernels(tmp_path):
    from families import compose_config
    from families.storm.trainer import Trainer

    overrides = TINY + SHORT + [f"BasicSettings.RunsDir={tmp_path}/runs", "BasicSettings.Deterministic=true"]
    assert not torch.are_deterministic_algorithms_enabled()
    try:
        Trainer(compose_config("STORM", overrides)).envs.close()
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 20-step run's folders (checkpoints at steps 10 and 20)."""
    tmp_path = tmp_path_factory.mktemp("finished")
    run(train_command(tmp_path, *SHORT))
    return tmp_path


@pytest.mark.parametrize("damage, expected", [
    ("truncate the buffer", "could not read replay buffer file {folder}/replay_buffer_20.pt (corrupt or not a "
                            "replay buffer): "),
    ("delete the buffer", "replay buffer file not found: {folder}/replay_buffer_20.pt; checkpoint_20.pt needs it: "
                          "put the file back, or start over with BasicSettings.Resume=fresh"),
    ("truncate the checkpoint", "cannot read checkpoint {folder}/checkpoint_20.pt: "),
    ("another model family", "{folder}/checkpoint_20.pt is a REM run, this is a STORM run: resume it with its own "
                             "config (--config-name REM), or use another BasicSettings.n"),
    ("newer format", "{folder}/checkpoint_20.pt was written by a newer version of this code (checkpoint format 99, "
                     "this code reads up to 2): update the code, or use another BasicSettings.n"),
    ("weights of another model", "{folder}/checkpoint_20.pt: its world_model does not fit this run's model ("),
])
def test_corrupt_or_missing_pieces_name_the_file_and_the_fix(finished_run, tmp_path, damage, expected):
    from families import compose_config
    from run_trainer import CheckpointError
    from families.storm.trainer import Trainer

    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    folder = tmp_path / "saved_models" / "disk"
    checkpoint_file, buffer_file = folder / "checkpoint_20.pt", folder / "replay_buffer_20.pt"
    if damage.startswith("truncate"):
        target = buffer_file if "buffer" in damage else checkpoint_file
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "delete the buffer":
        buffer_file.unlink()
    else:
        checkpoint = torch.load(checkpoint_file, weights_only=False)
        if damage == "another model family":
            checkpoint["config"]["BasicSettings"]["model"] = "REM"
        elif damage == "newer format":
            checkpoint["format"] = 99
        else:
            checkpoint["world_model"] = {"not": torch.zeros(1)}
        torch.save(checkpoint, checkpoint_file)
    cfg = compose_config("STORM", TINY + SHORT + [f"BasicSettings.RunsDir={tmp_path}/runs",
                                                  f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    trainer = Trainer(cfg)
    trainer.envs.close()
    with pytest.raises(CheckpointError) as raised:
        trainer.restore(checkpoint_file)
    message = str(raised.value)
    assert message.startswith(expected.format(folder=folder)), message
    assert "\n" not in message
    if damage.startswith("truncate"):
        assert message.endswith("start over with BasicSettings.Resume=fresh (old outputs are moved aside, "
                                "weights_<step>.pt kept)")
    if damage == "truncate the buffer":   # and train.py says it in that one line, with exit status 1
        result = subprocess.run(train_command(tmp_path, *SHORT), cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 1
        assert one_error_line(result.stderr) == f"error: {message}"


def test_a_second_signal_during_the_save_is_ignored_and_the_files_are_whole(finished_run, tmp_path, monkeypatch):
    """SIGTERM, then SIGINT in the middle of writing the checkpoint file: the save completes, the
    checkpoint loads, and the run would exit with the requeue status after handing the first
    signal to the handler installed before ours (as submitit's is), not the second."""
    from families import compose_config
    from families.storm.trainer import Trainer

    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    cfg = compose_config("STORM", TINY + SHORT + [f"BasicSettings.RunsDir={tmp_path}/runs",
                                                  f"BasicSettings.CheckpointDir={tmp_path}/saved_models"])
    trainer = Trainer(cfg)
    trainer.restore(tmp_path / "saved_models" / "disk" / "checkpoint_20.pt")
    trainer.start_envs()
    trainer.step = 30            # a later step's save, so that it writes new files
    trainer.buffer.num_appended = 30
    real_save = torch.save

    def save_interrupted(obj, f, *args, **kwargs):
        if "replay_buffer" in obj:   # the checkpoint itself
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(obj, f, *args, **kwargs)

    handed_over = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: handed_over.append(signum))
    try:
        monkeypatch.setattr(torch, "save", save_interrupted)
        with StopSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            trainer.save()
            with pytest.raises(SystemExit) as exited:
                stop.hand_over()
    finally:
        signal.signal(signal.SIGTERM, previous)
        trainer.envs.close()
    assert stop.received == signal.SIGTERM and handed_over == [signal.SIGTERM]
    assert exited.value.code == REQUEUE_EXIT_STATUS
    saved = torch.load(tmp_path / "saved_models" / "disk" / "checkpoint_30.pt", weights_only=False)
    assert saved["step"] == 30 and saved["replay_buffer"] == "replay_buffer_30.pt"


def test_a_signal_the_parent_ignores_stays_ignored():
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with StopSignals():
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGUSR2) is not signal.SIG_IGN
    finally:
        signal.signal(signal.SIGUSR1, previous)


# ---------------------------------------------------------------------- RNG state of the run's own device
def fake_cuda(monkeypatch) -> list:
    """torch.cuda's RNG functions recording their calls, so the CUDA path runs on a CPU machine."""
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device)) or "state")
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("set", state, device)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    return calls


def test_rng_state_holds_the_run_device_only_and_restores_old_per_gpu_lists(monkeypatch):
    calls = fake_cuda(monkeypatch)
    device = torch.device("cuda", 1)
    state = utils.rng_state(device)
    assert state["cuda"] == "state" and calls == [("get", device)]
    draws = random.random(), np.random.rand(), torch.rand(1).item()
    calls.clear()
    # an old checkpoint saved with 8 GPUs visible: one state each; the run drew from its own
    old = {"python": state["python"], "numpy": state["numpy"], "torch": state["torch"],
           "cuda": [f"gpu {i}" for i in range(8)]}
    for run_device, restored in ((torch.device("cuda"), "gpu 0"), (torch.device("cuda", 3), "gpu 3")):
        utils.set_rng_state(old, run_device)
        assert calls.pop() == ("set", restored, run_device)
    utils.set_rng_state({**old, "cuda": ["gpu 0"]}, torch.device("cuda", 0))   # requeued with 1 GPU
    assert calls.pop() == ("set", "gpu 0", torch.device("cuda", 0))
    utils.set_rng_state(old, torch.device("cpu"))                               # a CPU run ignores it
    assert calls == []
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == draws   # and restores the CPU generators


@pytest.mark.cuda
def test_rng_state_of_the_real_cuda_device_round_trips():
    device = torch.device("cuda", torch.cuda.current_device())
    state = utils.rng_state(device)
    first = torch.rand(4, device=device)
    utils.set_rng_state({**state, "cuda": [state["cuda"]] * (device.index + 1)}, device)   # old list form
    assert torch.equal(torch.rand(4, device=device), first)
    utils.set_rng_state(state, device)
    assert torch.equal(torch.rand(4, device=device), first)
