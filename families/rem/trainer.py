"""REM's training loop (REM_SPEC.md section 1): epochs of collection, then updates of the
tokenizer V, the world model M and the controller C, each with its own batches, optimiser and
start epoch. It is the REM family's loop (families/rem/__init__.py); run folders, checkpoints,
resume, logging and the progress bar are run_trainer.RunTrainer's, shared with every family.

Epoch e = 1 .. REMTrain.Epochs runs, in order:

    collect      if e <= CollectStopAfterEpochs: CollectStepsPerEpoch steps per env with C
                 (temperature CollectTemperature, epsilon CollectEpsilon), its LSTM first
                 burnt in on the last BurnIn stored steps of each env's ongoing episode
    V            if e > TokenizerStartAfterEpochs: TokenizerStepsPerEpoch updates on
                 TokenizerBatchSize frames
    M            if e > WorldModelStartAfterEpochs: WorldModelStepsPerEpoch updates on
                 WorldModelBatchSize x WorldModelBatchLength segments (right padded), tokens
                 from the current tokenizer
    C            if e > ControllerStartAfterEpochs: ControllerStepsPerEpoch updates, each
                 imagining from ControllerBatchSize x ControllerBatchLength segments (left padded)
    evaluate     if EvalEveryEpochs and e % EvalEveryEpochs == 0: EvalEpisodes episodes on
                 EvalNumEnvs test envs at EvalTemperature (the last epoch: FinalEvalEpisodes)
    checkpoint   if e % SaveEveryEpochs == 0, and after the last epoch

A stop signal (preemption.py) ends the epoch in progress after its current collected step or
update, with a checkpoint that records how far the epoch got (`epoch_done`): the resumed run
carries on inside that epoch, nothing redone.

With the paper's numbers: 500 x 200 = 100k collected steps, then 100 epochs of updates only.
REM's episodes end at a life loss, game over or time limit (all three are stored as
terminations), and its segments never cross an episode's end (families/rem/segments.py).

TensorBoard's x-axis is the *schedule step*, epoch x CollectStepsPerEpoch x NumEnvs: the env
step while collecting, and it keeps counting through the update-only epochs (progress/env_steps
holds the real count). Checkpoints are named by env step like every run's, so after collection
stops, the newest weights_<last step>.pt holds the weights of the latest epoch saved.
"""
import time

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from evaluation import EVAL_SEED_OFFSET, evaluate_checkpoint
from families.rem.acting import make_actor
from families.rem.segments import EpisodeSegments
from replay_buffer import ReplayBuffer
from run_trainer import RunTrainer, never
from sub_models.rem import build_rem_models
from utils import rng_state, set_rng_state

# A world-model segment starts where at least ContextLength + 1 real steps follow (REM's
# context_len = 2 plus the step that carries a loss); a controller segment ends where at least
# this many real steps lead up to it, so the imagination context is real.
CONTROLLER_MIN_REAL_STEPS = 3


class REMTrainer(RunTrainer):
    def __init__(self, cfg: DictConfig):
        train = cfg.REMTrain
        super().__init__(cfg, train.NumEnvs, train.KeepCheckpoints, train.MaxNonFiniteUpdates)
        if self.device.type == "cuda":
            # REM trains in fp32 (REM.yaml); on Ampere and later GPUs its matmuls then run in TF32
            # (fp32 range, 10-bit mantissa; convolutions already do by default), ~4x the fp32
            # throughput. Its losses stay within 1e-2 relative of full fp32 (tests/test_cuda_paths.py).
            torch.set_float32_matmul_precision("high")
        self.models = build_rem_models(cfg, self.action_dim, self.discrete, self.device, self.bf16)
        self.tokenizer, self.world_model, self.controller = (self.models[name] for name in
                                                             ("tokenizer", "world_model", "controller"))
        # REM keeps every collected step (its RAM cap is never reached at 100k steps).
        capacity = train.CollectStopAfterEpochs * train.CollectStepsPerEpoch * train.NumEnvs
        image = (cfg.BasicSettings.ImageSize, cfg.BasicSettings.ImageSize, 3)
        self.buffer = ReplayBuffer(image, (), torch.long, self.num_envs, capacity, 0, self.device,
                                   train.BufferOnDevice and self.device.type == "cuda")
        self.segments = EpisodeSegments(self.buffer)
        self.actor = make_actor(cfg, self.models, self.action_space, self.num_envs, evaluation=False)
        self.epoch = 0                # epochs completed
        # how far the epoch in progress got: steps collected per env ("collect"), updates per component
        self.epoch_done: dict[str, int] = {}

    def start_message(self) -> str:
        train = self.cfg.REMTrain
        return (f"{super().start_message()}, {train.Epochs} epochs ({train.CollectStopAfterEpochs} x "
                f"{train.CollectStepsPerEpoch} steps collected)")

    def finished_message(self) -> str | None:
        epochs = self.cfg.REMTrain.Epochs
        if self.epoch < epochs:
            return None
        return f"already reached epoch {self.epoch} at {self.step} steps (REMTrain.Epochs={epochs})"

    def progress(self) -> dict:
        return {**super().progress(), "epoch": self.epoch, "epoch_done": dict(self.epoch_done),
                "episode_cuts": list(self.segments.cuts)}

    def load_progress(self, state: dict) -> None:
        super().load_progress(state)
        self.epoch, self.segments.cuts = state["epoch"], list(state["episode_cuts"])
        self.epoch_done = dict(state.get("epoch_done", {}))

    def schedule_step(self, epoch: int) -> int:
        return epoch * self.cfg.REMTrain.CollectStepsPerEpoch * self.num_envs

    # ------------------------------------------------------------------ main loop
    def run(self, *, should_stop=never) -> None:
        train = self.cfg.REMTrain
        # events after the checkpoint (epoch figures at the schedule step, episodes at the env step) are written again
        last_kept = max(self.schedule_step(self.epoch), self.step)
        writer = SummaryWriter(str(self.dirs.logs), purge_step=last_kept + 1 if last_kept else None)
        continued = self.start_envs()
        if self.step and not continued:
            self.segments.mark_new_episode()   # the interrupted episodes end where the checkpoint was taken
        bar = self.progress_bar(train.Epochs, self.epoch, "epoch")
        pending, timer = self.pending, self.timer
        try:
            for epoch in range(self.epoch + 1, train.Epochs + 1):
                started = time.time()
                if epoch <= train.CollectStopAfterEpochs:
                    with timer("collect"):
                        self.collect(writer, should_stop)
                for phase, steps in self.updates_in(epoch).items():
                    with timer(f"{phase}_update"):
                        while self.epoch_done.get(phase, 0) < steps and not should_stop():
                            self.track(*self.update(phase), pending)
                            self.epoch_done[phase] = self.epoch_done.get(phase, 0) + 1
                if should_stop():   # inside the epoch: epoch_done says how far it got
                    self.save()
                    return
                if train.EvalEveryEpochs and epoch % train.EvalEveryEpochs == 0:
                    with timer("evaluate"):
                        episodes = train.FinalEvalEpisodes if epoch == train.Epochs else train.EvalEpisodes
                        pending["eval/return"] = [torch.tensor(self.evaluate(episodes).mean())]
                self.epoch, self.epoch_done = epoch, {}
                for phase, seconds in timer.pop().items():
                    pending[f"time/{phase}_seconds_per_epoch"] = [torch.tensor(seconds)]
                pending["time/epoch_seconds"] = [torch.tensor(time.time() - started)]
                pending["progress/env_steps"] = [torch.tensor(float(self.step))]
                self.flush(pending, writer, self.schedule_step(epoch))
                bar.update(1)
                bar.set_postfix(steps=self.step, episode_return=f"{self.last_return:.1f}", episodes=self.episodes)
                scheduled = epoch % train.SaveEveryEpochs == 0 or epoch == train.Epochs
                if scheduled or should_stop():
                    self.save()
                if should_stop():
                    return
        finally:
            bar.close()
            writer.close()
            self.envs.close()

    def updates_in(self, epoch: int) -> dict[str, int]:
        """{component: update steps} this epoch trains, in REM's order (V, then M, then C)."""
        train = self.cfg.REMTrain
        schedule = {"tokenizer": (train.TokenizerStartAfterEpochs, train.TokenizerStepsPerEpoch),
                    "world_model": (train.WorldModelStartAfterEpochs, train.WorldModelStepsPerEpoch),
                    "controller": (train.ControllerStartAfterEpochs, train.ControllerStepsPerEpoch)}
        return {name: steps for name, (start_after, steps) in schedule.items() if epoch > start_after and steps}

    # ------------------------------------------------------------------ collection
    def collect(self, writer: SummaryWriter, should_stop) -> None:
        """The rest of this epoch's CollectStepsPerEpoch steps of every env, or until `should_stop()`."""
        train, actor = self.cfg.REMTrain, self.actor
        self.controller.eval()
        self.tokenizer.eval()
        if not self.epoch_done.get("collect"):   # else the actor's state was restored mid-collection
            burn_in = self.segments.current_episodes(train.BurnIn)
            actor.burn_in(burn_in[0], burn_in[1], burn_in[4])
        while self.epoch_done.get("collect", 0) < train.CollectStepsPerEpoch and not should_stop():
            action = actor.act(self.obs)
            next_obs, reward, terminated, truncated, info = self.envs.step(action)
            # A life loss, game over or time limit ends REM's episode (REM_SPEC section 2).
            ended = terminated | truncated | info["life_loss"]
            self.buffer.append(self.obs, action, reward.astype(np.float32), ended)
            actor.end_episodes(ended)
            self.obs = next_obs
            self.step += self.num_envs
            self.epoch_done["collect"] = self.epoch_done.get("collect", 0) + 1
            self.record_episodes(info, writer)

    # ------------------------------------------------------------------ updates
    def update(self, component: str) -> tuple[dict, torch.Tensor]:
        train, wm = self.cfg.REMTrain, self.world_model.cfg
        if component == "tokenizer":
            return self.tokenizer.update(self.segments.frames(train.TokenizerBatchSize))
        self.tokenizer.eval()
        codebook = self.tokenizer.codebook
        if component == "world_model":
            obs, actions, rewards, ends, mask = self.segments.forward_segments(
                train.WorldModelBatchSize, train.WorldModelBatchLength, wm.ContextLength + 1)
            return self.world_model.update(self.tokenizer.tokenize(obs), actions, rewards, ends, codebook, mask)
        obs, actions, _, _, mask = self.segments.backward_segments(
            train.ControllerBatchSize, train.ControllerBatchLength, CONTROLLER_MIN_REAL_STEPS)
        return self.controller.update(self.tokenizer.tokenize(obs), actions, mask, self.world_model, codebook,
                                      train.ImagineHorizon, wm.ContextLength)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, episodes: int) -> np.ndarray:
        """Returns of `episodes` test episodes with REM's acting rule (evaluation.evaluate_checkpoint), on
        the same env seeds at every epoch (as eval.py gives every checkpoint); evaluating leaves
        the training run's random streams as they were."""
        train = self.cfg.REMTrain
        state = rng_state(self.device)   # evaluate_checkpoint seeds every generator; put the training streams back
        try:
            return evaluate_checkpoint(self.models, self.cfg, make_actor, self.cfg.BasicSettings.env_name, episodes,
                                       min(train.EvalNumEnvs, episodes),
                                       self.cfg.BasicSettings.Seed + EVAL_SEED_OFFSET)
        finally:
            set_rng_state(state, self.device)
