"""STORM's and GIT-STORM's training loop (paper table 8): collect real steps, and after the
warm-up, per env step one world-model update and one agent update in imagination."""
import math
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter

from agents import build_models
from families.storm.acting import EnvActor
from replay_buffer import ReplayBuffer
from run_trainer import RunTrainer, never
from update_steps import UpdateSteps, hot_path_mode


class Trainer(RunTrainer):
    """STORM / GIT-STORM: after the warm-up, per env step one world-model update and one agent
    update in imagination."""

    def __init__(self, cfg: DictConfig):
        train = cfg.JointTrainAgent
        super().__init__(cfg, train.NumEnvs, train.KeepCheckpoints, train.MaxNonFiniteUpdates)
        self.world_model, self.agent = build_models(cfg, self.action_dim, self.discrete, self.device, self.bf16)
        self.models = {"world_model": self.world_model, "agent": self.agent}
        self.update_steps = UpdateSteps(self.world_model, self.agent, train.ImagineBatchLength,
                                        hot_path_mode(cfg.BasicSettings.Compile, self.device))
        on_device = train.BufferOnDevice and self.device.type == "cuda"
        image = (cfg.BasicSettings.ImageSize, cfg.BasicSettings.ImageSize, 3)
        self.buffer = ReplayBuffer(image, () if self.discrete else (self.action_dim,),
                                   torch.long if self.discrete else torch.float32, self.num_envs,
                                   train.BufferMaxLength, train.BufferWarmUp, self.device, on_device)
        self.actor = EnvActor(self.world_model, self.agent, self.action_space, self.num_envs, train.RealityContextLength)
        self.updates = 0              # env steps with the buffer ready (the Train*EverySteps count these)
        self.last_log_step = 0

    def progress(self) -> dict:
        return {**super().progress(), "updates": self.updates, "last_log_step": self.last_log_step}

    def load_progress(self, state: dict) -> None:
        super().load_progress(state)
        # before format 2: counted from the resume, as then
        self.updates, self.last_log_step = state.get("updates", 0), state.get("last_log_step", state["step"])

    def start_message(self) -> str:
        return f"{super().start_message()}, prior {self.cfg.Models.WorldModel.Prior}, updates {self.update_steps.mode}"

    def finished_message(self) -> str | None:
        limit = self.cfg.JointTrainAgent.SampleMaxSteps
        if self.step < limit:
            return None
        return f"already reached {self.step} steps (JointTrainAgent.SampleMaxSteps={limit})"

    # ------------------------------------------------------------------ main loop
    def run(self, after_step: Callable[[], None] | None = None, *, should_stop: Callable[[], bool] = never) -> None:
        """Train until JointTrainAgent.SampleMaxSteps, or until `should_stop()` says so after a
        step (then with a checkpoint of that step); `after_step` is called after every env step
        and its updates (tools/benchmarks/throughput.py times the loop through it)."""
        train = self.cfg.JointTrainAgent
        envs, actor, pending = self.envs, self.actor, self.pending
        # events after the checkpoint's step were not kept by it: a resumed run writes them again
        writer = SummaryWriter(str(self.dirs.logs), purge_step=self.step + 1 if self.step else None)
        self.start_envs()
        last_log_time = time.time()
        bar = self.progress_bar(train.SampleMaxSteps, self.step, "step")
        next_save = (self.step // train.SaveEverySteps + 1) * train.SaveEverySteps
        next_video = (self.step // train.VideoEverySteps + 1) * train.VideoEverySteps if train.VideoEverySteps else math.inf
        saved_at = None
        timer = self.timer
        try:
            while self.step < train.SampleMaxSteps:
                with timer("acting"):
                    env_action = actor.act(self.obs, random=not self.buffer.ready())
                with timer("env"):
                    next_obs, reward, terminated, truncated, info = envs.step(env_action)
                    termination = np.logical_or(terminated, info["life_loss"])
                    self.buffer.append(self.obs, env_action, reward.astype(np.float32), termination)
                self.obs = next_obs
                self.step += self.num_envs
                bar.update(self.num_envs)
                self.record_episodes(info, writer)

                if self.buffer.ready():
                    self.updates += 1
                    if self.updates % train.TrainDynamicsEverySteps == 0:
                        with timer("world_model_update"):
                            batch = self.buffer.sample(train.BatchSize, train.BatchLength)
                            # once per log, on the first world-model update after it; decided by
                            # what is pending (saved in checkpoints), so a resumed run does the same
                            if "world_model/sampling_kl" not in pending:
                                pending.update(self.sampling_figures(batch))
                            self.track(*self.update_steps.world_model_update(*batch), pending)
                    if self.updates % train.TrainAgentEverySteps == 0:
                        with timer("imagination_and_agent_update"):
                            context_obs, context_actions, _, _ = self.buffer.sample(train.ImagineBatchSize,
                                                                                    train.ImagineContextLength)
                            self.track(*self.update_steps.agent_update(context_obs, context_actions), pending)
                if after_step is not None:
                    after_step()

                if self.step - self.last_log_step >= train.LogEverySteps:
                    now = time.time()
                    steps = self.step - self.last_log_step
                    pending["time/env_steps_per_second"] = [torch.tensor(steps / (now - last_log_time))]
                    for phase, seconds in timer.pop().items():
                        pending[f"time/{phase}_ms_per_env_step"] = [torch.tensor(1e3 * seconds / steps)]
                    self.flush(pending, writer)
                    last_log_time, self.last_log_step = now, self.step
                    bar.set_postfix(episode_return=f"{self.last_return:.1f}", episodes=self.episodes)
                if self.step >= next_video and self.buffer.ready():
                    self.log_video(writer)
                    next_video += train.VideoEverySteps
                if self.step >= next_save:
                    self.save()
                    saved_at, next_save = self.step, next_save + train.SaveEverySteps
                if should_stop():
                    break
            if saved_at != self.step:
                self.save()
        finally:
            bar.close()
            writer.close()
            envs.close()

    @contextmanager
    def own_random_stream(self):
        """Draws inside come from a generator of their own (seeded by Seed and step), so what is
        drawn only for logging leaves the training run's random stream, and so the run, unchanged."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.BasicSettings.Seed + self.step)
            yield

    def sampling_figures(self, batch) -> dict[str, list[torch.Tensor]]:
        """world_model/sampling_kl and sampling_perplexity (WorldModel.sampling_figures) on an
        update's batch, before the update trains on it: once per log, without gradients, on the
        device (nothing waits for them until the log)."""
        obs, actions, _, _ = batch
        with self.own_random_stream():
            figures = self.world_model.sampling_figures(obs, actions)
        return {key: [value] for key, value in figures.items()}

    @torch.no_grad()
    def log_video(self, writer: SummaryWriter) -> None:
        """Imagined rollout (same real actions, open loop) beside the real frames, and reconstructions,
        drawn from a random stream of their own: turning videos on or off leaves the run unchanged."""
        with self.own_random_stream():
            self._log_video(writer)

    def _log_video(self, writer: SummaryWriter) -> None:
        train = self.cfg.JointTrainAgent
        context, horizon = train.ImagineContextLength, train.ImagineBatchLength
        obs, actions, _, _ = self.buffer.sample(4, context + horizon)
        rollout = self.world_model.imagine(obs[:, :context], actions[:, :context], actions[:, context:], horizon,
                                           eager=True)
        predicted = self.world_model.decode(rollout.latents[:, 1:].unflatten(-1, (self.world_model.num_variables,
                                                                                   self.world_model.num_classes)))
        real = obs[:, context:].float() / 255.0
        side_by_side = torch.cat([real, predicted.float().clamp(0, 1)], dim=3)   # (B, H, 64, 128, 3)
        writer.add_video("imagination/real_vs_imagined", side_by_side.permute(0, 1, 4, 2, 3).cpu(), self.step, fps=8)
        latents = self.world_model.encode_sample(obs[:, :context])
        reconstruction = self.world_model.decode(latents).float().clamp(0, 1)
        pairs = torch.cat([obs[:, :context].float() / 255.0, reconstruction], dim=2)  # real above reconstruction
        writer.add_images("reconstruction/real_over_reconstructed", pairs[:, -1].permute(0, 3, 1, 2).cpu(), self.step)
