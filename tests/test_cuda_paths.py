"""What a CUDA run meets that a CPU run does not: the suite pinned to the CPU, precision chosen
for the run's own GPU, and (marked `cuda`, run with `pytest -m cuda` on a GPU machine) the paths
only a GPU can show: no host syncs in the hot loop, TF32 where it is allowed, the phase timer."""
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager

import gymnasium
import numpy as np
import pytest
import torch

from replay_buffer import ReplayBuffer
from utils import describe_precision, select_device, use_bf16


def test_tests_run_cpu_only_unless_marked_cuda():
    """conftest.cpu_only: on a GPU machine too, `Device=auto` is the CPU in the tests and in the
    entry points they start, so the suite gives the verdicts it gives on a CPU machine."""
    assert select_device("auto") == torch.device("cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    child = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=120)
    assert child.stdout.strip() == "False", child.stderr


def test_auto_precision_is_fp32_on_the_selected_gpu_without_native_bf16(monkeypatch):
    """A machine whose cuda:0 is an A100 (8.0) and cuda:1 a V100 (7.0): a run on cuda:1 computes
    in fp32 under `auto`, is refused bf16, and says why; the capability asked is cuda:1's."""
    capabilities = {0: (8, 0), 1: (7, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: capabilities[torch.device(device).index])
    names = {0: "A100", 1: "Tesla V100"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: names[torch.device(device).index])
    a100, v100 = torch.device("cuda:0"), torch.device("cuda:1")
    assert use_bf16("auto", a100) and use_bf16("bf16", a100)
    assert not use_bf16("auto", v100) and not use_bf16("fp32", a100)
    with pytest.raises(ValueError, match=r"native bf16 .*device is cuda:1 \(Tesla V100, compute capability 7\.0\)"):
        use_bf16("bf16", v100)
    assert describe_precision("auto", v100, False) == "fp32 (MixedPrecision=auto and this GPU has no native bf16)"
    assert describe_precision("auto", a100, True) == "bf16 autocast"


# ---------------------------------------------------------------------- CUDA only
@pytest.fixture
def host_syncs_raise():
    """Every operation that makes the host wait for the GPU raises inside (torch's sync debug mode)."""
    @contextmanager
    def mode():
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return mode


def count_host_syncs(run) -> int:
    """How many times `run()` makes the host wait for the GPU (torch's sync debug mode, warning)."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


@pytest.mark.cuda
@pytest.mark.parametrize("store_on_device", [True, False])
def test_replay_buffer_appends_and_samples_without_waiting_for_the_gpu(store_on_device, host_syncs_raise):
    buffer = ReplayBuffer((64, 64, 3), (), torch.long, 2, 64, 0, device="cuda", store_on_device=store_on_device)

    def step(t):   # what the vector env gives: NumPy arrays in pageable host memory
        return (np.full((2, 64, 64, 3), t, np.uint8), np.array([t, t + 1]), np.zeros(2, np.float32),
                np.array([False, t % 7 == 0]))

    buffer.append(*step(0))
    with host_syncs_raise():
        for t in range(1, 20):
            buffer.append(*step(t))
        obs, actions, rewards, terminations = buffer.sample(8, 5)
    assert obs.device.type == "cuda" and obs.shape == (8, 5, 64, 64, 3)
    assert torch.equal(actions[:, 1:] - actions[:, :-1], torch.ones(8, 4, dtype=torch.long, device="cuda"))


@pytest.mark.cuda
@pytest.mark.parametrize("prior", ["mlp", "maskgit"])
def test_training_step_waits_for_the_gpu_only_for_the_action(prior, host_syncs_raise):
    """One env step of train.py's loop on CUDA (eager, fp32 and bf16): the world-model update,
    imagination and the agent update never wait for the GPU; acting waits once, for the action
    the env needs on the host."""
    from families.storm.acting import EnvActor
    from agents import build_models
    from families import compose_config
    for bf16 in (False, True):
        cfg = compose_config("STORM", ["+preset=cpu", f"Models.WorldModel.Prior={prior}"])
        world_model, agent = build_models(cfg, 18, True, torch.device("cuda"), bf16)
        actor = EnvActor(world_model, agent, gymnasium.spaces.Discrete(18), 2, 4)
        obs = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
        g = torch.Generator().manual_seed(0)
        batch = (torch.randint(0, 256, (2, 8, 64, 64, 3), dtype=torch.uint8, generator=g).cuda(),
                 torch.randint(0, 18, (2, 8), generator=g).cuda(), torch.randn(2, 8, generator=g).cuda(),
                 torch.zeros(2, 8).cuda())

        def update():
            world_model.update(*batch)
            agent.update(world_model.imagine(batch[0][:, :4], batch[1][:, :4], agent.policy, 4))

        update()   # warm-up: lazy initialisation of cuBLAS, cuDNN and the optimisers' state
        actor.act(obs)
        with host_syncs_raise():
            update()
        assert count_host_syncs(lambda: actor.act(obs)) == 1     # from the history
        actor.reset()
        assert count_host_syncs(lambda: actor.act(obs)) == 1     # random, empty history


@pytest.mark.cuda
def test_rem_updates_never_wait_for_the_gpu(host_syncs_raise):
    """The tokenizer, world-model and controller updates of an epoch, from a buffer in GPU memory,
    with the valid segment steps found once before (nonzero) as the first update of an epoch does."""
    from families import family_of
    from families import compose_config
    from families.rem.segments import EpisodeSegments
    from families.rem.trainer import CONTROLLER_MIN_REAL_STEPS
    cfg = compose_config("REM", ["+preset=rem_cpu"])
    train, wm_cfg = cfg.REMTrain, cfg.Models.RetNetWorldModel
    models = family_of(cfg).build_models(cfg, 18, True, torch.device("cuda"), False)
    tokenizer, world_model, controller = models["tokenizer"], models["world_model"], models["controller"]
    buffer = ReplayBuffer((64, 64, 3), (), torch.long, 1, 200, 0, device="cuda", store_on_device=True)
    rng = np.random.default_rng(0)
    for t in range(120):
        buffer.append(rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), np.array([t % 18]),
                      np.array([float(t % 5 == 0)], np.float32), np.array([t % 40 == 39]))
    segments = EpisodeSegments(buffer)

    def updates():
        tokenizer.update(segments.frames(train.TokenizerBatchSize))
        obs, actions, rewards, ends, mask = segments.forward_segments(
            train.WorldModelBatchSize, train.WorldModelBatchLength, wm_cfg.ContextLength + 1)
        world_model.update(tokenizer.tokenize(obs), actions, rewards, ends, tokenizer.codebook, mask)
        obs, actions, _, _, mask = segments.backward_segments(
            train.ControllerBatchSize, train.ControllerBatchLength, CONTROLLER_MIN_REAL_STEPS)
        controller.update(tokenizer.tokenize(obs), actions, mask, world_model, tokenizer.codebook,
                          train.ImagineHorizon, wm_cfg.ContextLength)

    updates()
    with host_syncs_raise():
        updates()


@pytest.mark.cuda
def test_rem_trains_with_tf32_matmuls_within_tolerance_of_full_fp32(tmp_path):
    """REMTrainer allows TF32 on CUDA; the world-model loss of REM's paper-size model on one batch
    then stays within 1e-2 relative of the full-fp32 one."""
    from families import compose_config
    from families.rem.trainer import REMTrainer
    cfg = compose_config("REM", [f"BasicSettings.RunsDir={tmp_path}/runs", f"BasicSettings.CheckpointDir={tmp_path}/s",
                                 "BasicSettings.Device=cuda", "BasicSettings.n=tf32"])
    try:
        trainer = REMTrainer(cfg)
        trainer.envs.close()
        assert torch.get_float32_matmul_precision() == "high"
        tokenizer, world_model = trainer.tokenizer, trainer.world_model.eval()   # no dropout: one loss twice
        g = torch.Generator().manual_seed(0)
        steps = cfg.REMTrain.WorldModelBatchLength
        tokens = torch.randint(0, cfg.Models.Tokenizer.VocabSize, (4, steps, 64), generator=g).cuda()
        actions = torch.randint(0, trainer.action_dim, (4, steps), generator=g).cuda()
        rewards, ends = torch.randn(4, steps, generator=g).cuda(), (torch.rand(4, steps, generator=g) < 0.05).cuda()
        losses = {}
        for precision in ("highest", "high"):
            torch.set_float32_matmul_precision(precision)
            with torch.no_grad():
                loss, _ = world_model.loss(tokens, actions, rewards, ends.float(), tokenizer.codebook)
                losses[precision] = loss.item()
        assert losses["high"] == pytest.approx(losses["highest"], rel=1e-2)
    finally:
        torch.set_float32_matmul_precision("highest")


@pytest.mark.cuda
def test_phase_timer_bills_gpu_work_to_the_phase_that_queued_it():
    """~50 ms of GPU work queued in microseconds, then a phase that waits for it: the wall clock
    would give the first phase ~0 and the waiting one ~50 ms; the CUDA events give it back."""
    from run_trainer import PhaseTimer
    timer = PhaseTimer(torch.device("cuda"))
    torch.cuda.synchronize()
    with timer("queue"):
        torch.cuda._sleep(100_000_000)      # GPU clock cycles: ~50 ms at 2 GHz
    with timer("wait"):
        torch.cuda.synchronize()
    seconds = timer.pop()
    assert seconds["queue"] > 0.01 and seconds["wait"] < seconds["queue"] / 5
