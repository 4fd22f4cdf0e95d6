"""Train STORM or GIT-STORM (collect real steps, and after the warm-up, per env step one
world-model update and one agent update in imagination; paper table 8) or REM (epochs of
collection, then tokenizer, world-model and controller updates; sub_models/rem/trainer.py).

    python train.py BasicSettings.env_name=ALE/Boxing-v5                                   # STORM
    python train.py BasicSettings.config_path=config_files/GITSTORM.yaml BasicSettings.env_name=ALE/Boxing-v5
    python train.py --config-name GITSTORM +preset=cpu                                     # quick CPU run
    python train.py --config-name REM BasicSettings.env_name=ALE/Boxing-v5                 # REM

Outputs: TensorBoard events in runs/<n>/, checkpoints in saved_models/<n>/. Re-running the
same command resumes from the latest checkpoint (BasicSettings.Resume=fresh starts over).
"""
import math
import sys
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from acting import EnvActor
from config import ConfigError, config_differences, default_run_name, load_config
from env_wrapper import make_vector_env
from replay_buffer import ReplayBuffer
from agents import build_models
from utils import (action_spec, atomic_torch_save, load_checkpoint_file, rng_state, seed_everything,
                   select_device, set_rng_state, use_bf16, use_compile)

CHECKPOINT_GLOB = "checkpoint_*.pt"


class NonFiniteLossError(RuntimeError):
    pass


class RunDirectories:
    """runs/<n>/ for TensorBoard, saved_models/<n>/ for checkpoints, weights and the buffer."""

    def __init__(self, cfg):
        self.name = cfg.BasicSettings.n
        self.logs = Path(cfg.BasicSettings.RunsDir) / self.name
        self.checkpoints = Path(cfg.BasicSettings.CheckpointDir) / self.name

    def checkpoints_by_step(self) -> list[Path]:
        return sorted(self.checkpoints.glob(CHECKPOINT_GLOB), key=lambda p: int(p.stem.split("_")[-1]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints_by_step()
        return found[-1] if found else None

    def move_aside(self) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for folder in (self.logs, self.checkpoints):
            if folder.exists():
                target = folder.with_name(f"{folder.name}.old-{stamp}")
                folder.rename(target)
                print(f"Moved {folder} to {target} (BasicSettings.Resume=fresh)")


class PhaseTimer:
    """Wall time of each phase of the loop (acting, env, world-model update, imagination +
    agent update), summed until `pop`. GPU work is asynchronous: without `sync` its time is
    billed to whichever phase next waits for the device (acting, which copies the action to
    the host); with `sync` every phase waits for the device at its end (benchmarks)."""

    def __init__(self, device: torch.device, sync: bool = False):
        self.sync = sync and device.type == "cuda"
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        if self.sync:
            torch.cuda.synchronize()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds


class RunTrainer(ABC):
    """What every model family's training shares: the run folders, device and precision, the
    training envs, checkpoints and resume (models, optimisers, replay buffer, RNG), and the
    logging of update figures, non-finite updates and episodes. A family's loop subclasses it,
    fills `self.models` (name -> module with its `.optimizer`) and `self.buffer`, and writes `run`
    (Trainer below for STORM / GIT-STORM, sub_models/rem/trainer.py for REM)."""

    def __init__(self, cfg: DictConfig, num_envs: int, keep_checkpoints: int, max_non_finite: int):
        self.cfg = cfg
        self.dirs = RunDirectories(cfg)
        self.device = select_device(cfg.BasicSettings.Device)
        self.bf16 = use_bf16(cfg.BasicSettings.MixedPrecision, self.device)
        seed_everything(cfg.BasicSettings.Seed)
        self.keep_checkpoints, self.max_non_finite = keep_checkpoints, max_non_finite

        self.num_envs = num_envs
        self.envs = make_vector_env(cfg.BasicSettings.env_name, num_envs, cfg.BasicSettings.Seed, training=True,
                                    image_size=cfg.BasicSettings.ImageSize, protocol=cfg.BasicSettings.AtariProtocol)
        self.action_space = self.envs.single_action_space
        self.action_dim, self.discrete = action_spec(self.action_space)
        self.models: dict[str, torch.nn.Module] = {}
        self.buffer: ReplayBuffer | None = None
        self.step = 0                 # env steps summed over envs
        self.episodes = 0
        self.last_return = float("nan")
        # Non-finite updates are counted on the device and looked at when logging, so no
        # update waits for the device to say whether it was finite.
        self.non_finite_in_a_row = torch.zeros((), dtype=torch.long, device=self.device)
        self.longest_non_finite_run = torch.zeros((), dtype=torch.long, device=self.device)
        self.timer = PhaseTimer(self.device)

    def start_message(self) -> str:
        return f"{self.cfg.BasicSettings.env_name}, device {self.device}{' (bf16)' if self.bf16 else ''}"

    @abstractmethod
    def finished_message(self) -> str | None:
        """Why there is nothing left to train, or None."""

    @abstractmethod
    def run(self) -> None:
        """Train until the run's budget is spent, saving checkpoints on the way."""

    # ------------------------------------------------------------------ checkpoints
    def progress(self) -> dict:
        """Where the loop stands, beyond models and buffer (a family adds its own counters)."""
        return {"step": self.step, "episodes": self.episodes, "last_return": self.last_return}

    def load_progress(self, state: dict) -> None:
        self.step, self.episodes, self.last_return = state["step"], state["episodes"], state["last_return"]

    def state(self) -> dict:
        models = {}
        for name, module in self.models.items():
            models[name] = module.state_dict()
            models[f"{name}_optimizer"] = module.optimizer.state_dict()
        return {**self.progress(), **models, "rng": rng_state(),
                "config": OmegaConf.to_container(self.cfg, resolve=True)}

    def save(self) -> None:
        """Buffer first, then the checkpoint that names it: a kill between the two leaves the
        previous checkpoint and its own buffer file intact."""
        folder, step = self.dirs.checkpoints, self.step
        self.buffer.save(folder / f"replay_buffer_{step}.pt")
        weights = {"step": step, **{name: module.state_dict() for name, module in self.models.items()},
                   "config": OmegaConf.to_container(self.cfg, resolve=True),
                   "action_dim": self.action_dim, "discrete": self.discrete}
        atomic_torch_save(weights, folder / f"weights_{step}.pt")
        atomic_torch_save(self.state() | {"replay_buffer": f"replay_buffer_{step}.pt"}, folder / f"checkpoint_{step}.pt")
        for old in self.dirs.checkpoints_by_step()[:-self.keep_checkpoints]:
            old.unlink()
        # Only the newest checkpoint keeps its buffer (a full one is ~1.2 GB); resuming always
        # starts from the newest, and weights_<step>.pt of every save stay for eval.py.
        for buffer_file in folder.glob("replay_buffer_*.pt"):
            if buffer_file.name != f"replay_buffer_{step}.pt":
                buffer_file.unlink()

    def restore(self, path: Path) -> None:
        state = load_checkpoint_file(path)
        differences = config_differences(state["config"], self.cfg)
        if differences:
            raise ValueError(f"{path} was written with a different configuration:\n  " + "\n  ".join(differences)
                             + "\nUse the original settings, another BasicSettings.n, or BasicSettings.Resume=fresh.")
        for name, module in self.models.items():
            module.load_state_dict(state[name])
            module.optimizer.load_state_dict(state[f"{name}_optimizer"])
        self.buffer.load(path.parent / state["replay_buffer"])
        # Compare every step ever appended, not len(): the buffer stops growing at capacity.
        appended = self.buffer.num_appended * self.num_envs
        if appended != state["step"]:
            raise RuntimeError(f"{path}: replay buffer has seen {appended} steps but the checkpoint is at "
                               f"step {state['step']}; the run folder is inconsistent")
        self.load_progress(state)
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ logging
    def progress_bar(self, total: int, initial: int, unit: str) -> tqdm:
        return tqdm(total=total, initial=initial, desc=self.dirs.name, unit=unit, dynamic_ncols=True, disable=None)

    def record_episodes(self, info: dict, writer: SummaryWriter) -> None:
        final = info.get("final_info", {})
        finished = final.get("_episode")
        if finished is None:
            return
        for i in np.flatnonzero(finished):
            self.episodes += 1
            self.last_return = float(final["episode"]["r"][i])
            writer.add_scalar("episode/return", self.last_return, self.step)
            writer.add_scalar("episode/length", float(final["episode"]["l"][i]), self.step)

    def track(self, metrics: dict, finite: torch.Tensor, pending: dict) -> None:
        """Keep an update's figures for the next log; count skipped (non-finite) updates on the device."""
        for key, value in metrics.items():
            pending.setdefault(key, []).append(value)
        pending.setdefault("health/skipped_updates", []).append((~finite).float())
        self.non_finite_in_a_row = torch.where(finite, 0, self.non_finite_in_a_row + 1)
        self.longest_non_finite_run = torch.maximum(self.longest_non_finite_run, self.non_finite_in_a_row)

    def check_health(self, pending: dict) -> None:
        """Stop the run if `max_non_finite` updates in a row were skipped since the last log
        (the weights never took those steps), naming the figures that were not finite."""
        longest = int(self.longest_non_finite_run)
        if longest >= self.max_non_finite:
            bad = [k for k, values in pending.items() if not all(bool(torch.isfinite(v).all()) for v in values)]
            raise NonFiniteLossError(f"step {self.step}: {longest} non-finite updates in a row "
                                     f"(non-finite: {', '.join(bad)}); stopping. Resume from the last checkpoint in "
                                     f"{self.dirs.checkpoints} after lowering the learning rate or checking the data.")

    def flush(self, pending: dict, writer: SummaryWriter, x: int | None = None) -> None:
        """Write the mean of every figure since the last log at x (default: the env step); figures
        of skipped updates (not finite) are left out of the means and counted in health/skipped_updates."""
        x = self.step if x is None else x
        self.check_health(pending)
        self.longest_non_finite_run.copy_(self.non_finite_in_a_row)
        skipped = 0
        for key, values in pending.items():
            stacked = torch.stack([v.detach().float() for v in values]).cpu()
            finite = stacked[torch.isfinite(stacked)]
            if key == "health/skipped_updates":
                skipped = int(stacked.sum())
                writer.add_scalar(key, float(skipped), x)
            elif finite.numel():
                writer.add_scalar(key, finite.mean().item(), x)
        if skipped:
            tqdm.write(f"step {self.step}: {skipped} update(s) since the last log skipped (non-finite loss or gradient)")
        writer.add_scalar("buffer/size", len(self.buffer), x)
        pending.clear()


class Trainer(RunTrainer):
    """STORM / GIT-STORM: after the warm-up, per env step one world-model update and one agent
    update in imagination."""

    def __init__(self, cfg: DictConfig):
        train = cfg.JointTrainAgent
        super().__init__(cfg, train.NumEnvs, train.KeepCheckpoints, train.MaxNonFiniteUpdates)
        self.world_model, self.agent = build_models(cfg, self.action_dim, self.discrete, self.device, self.bf16)
        self.models = {"world_model": self.world_model, "agent": self.agent}
        self.compiled = use_compile(cfg.BasicSettings.Compile, self.device)
        if self.compiled:
            self.world_model.compile_hot_paths()
            self.agent.compile_hot_paths()
        on_device = train.BufferOnDevice and self.device.type == "cuda"
        image = (cfg.BasicSettings.ImageSize, cfg.BasicSettings.ImageSize, 3)
        self.buffer = ReplayBuffer(image, () if self.discrete else (self.action_dim,),
                                   torch.long if self.discrete else torch.float32, self.num_envs,
                                   train.BufferMaxLength, train.BufferWarmUp, self.device, on_device)

    def start_message(self) -> str:
        return f"{super().start_message()}, prior {self.cfg.Models.WorldModel.Prior}"

    def finished_message(self) -> str | None:
        limit = self.cfg.JointTrainAgent.SampleMaxSteps
        if self.step < limit:
            return None
        return f"already reached {self.step} steps (JointTrainAgent.SampleMaxSteps={limit})"

    # ------------------------------------------------------------------ main loop
    def run(self, after_step: Callable[[], None] | None = None) -> None:
        """Train until JointTrainAgent.SampleMaxSteps; `after_step` is called after every env
        step and its updates (tools/benchmarks/throughput.py times the loop through it)."""
        cfg, train = self.cfg, self.cfg.JointTrainAgent
        envs = self.envs
        writer = SummaryWriter(str(self.dirs.logs), purge_step=self.step if self.step else None)
        actor = EnvActor(self.world_model, self.agent, self.action_space, self.num_envs, train.RealityContextLength)
        # A resumed run reseeds with Seed + step so its episodes are not replays of the first ones.
        obs, _ = envs.reset(seed=cfg.BasicSettings.Seed + self.step)
        pending: dict[str, list[torch.Tensor]] = {}
        last_log_time, last_log_step = time.time(), self.step
        bar = self.progress_bar(train.SampleMaxSteps, self.step, "step")
        next_save = (self.step // train.SaveEverySteps + 1) * train.SaveEverySteps
        next_video = (self.step // train.VideoEverySteps + 1) * train.VideoEverySteps if train.VideoEverySteps else math.inf
        updates, saved_at = 0, None
        sampling_figures_due = True   # the first world-model update after each log
        timer = self.timer
        try:
            while self.step < train.SampleMaxSteps:
                with timer("acting"):
                    env_action = actor.act(obs, random=not self.buffer.ready())
                with timer("env"):
                    next_obs, reward, terminated, truncated, info = envs.step(env_action)
                    termination = np.logical_or(terminated, info["life_loss"])
                    self.buffer.append(obs, env_action, reward.astype(np.float32), termination)
                obs = next_obs
                self.step += self.num_envs
                bar.update(self.num_envs)
                self.record_episodes(info, writer)

                if self.buffer.ready():
                    updates += 1
                    if updates % train.TrainDynamicsEverySteps == 0:
                        with timer("world_model_update"):
                            batch = self.buffer.sample(train.BatchSize, train.BatchLength)
                            if sampling_figures_due:
                                pending.update(self.sampling_figures(batch))
                                sampling_figures_due = False
                            self.track(*self.world_model.update(*batch), pending)
                    if updates % train.TrainAgentEverySteps == 0:
                        with timer("imagination_and_agent_update"):
                            context_obs, context_actions, _, _ = self.buffer.sample(train.ImagineBatchSize,
                                                                                    train.ImagineContextLength)
                            rollout = self.world_model.imagine(context_obs, context_actions, self.agent.policy,
                                                               train.ImagineBatchLength)
                            self.track(*self.agent.update(rollout), pending)
                if after_step is not None:
                    after_step()

                if self.step - last_log_step >= train.LogEverySteps:
                    now = time.time()
                    steps = self.step - last_log_step
                    pending["time/env_steps_per_second"] = [torch.tensor(steps / (now - last_log_time))]
                    for phase, seconds in timer.pop().items():
                        pending[f"time/{phase}_ms_per_env_step"] = [torch.tensor(1e3 * seconds / steps)]
                    self.flush(pending, writer)
                    last_log_time, last_log_step = now, self.step
                    sampling_figures_due = True
                    bar.set_postfix(episode_return=f"{self.last_return:.1f}", episodes=self.episodes)
                if self.step >= next_video and self.buffer.ready():
                    self.log_video(writer)
                    next_video += train.VideoEverySteps
                if self.step >= next_save:
                    self.save()
                    saved_at, next_save = self.step, next_save + train.SaveEverySteps
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
        rollout = self.world_model.imagine(obs[:, :context], actions[:, :context], actions[:, context:], horizon)
        predicted = self.world_model.decode(rollout.latents[:, 1:].unflatten(-1, (self.world_model.num_variables,
                                                                                   self.world_model.num_classes)))
        real = obs[:, context:].float() / 255.0
        side_by_side = torch.cat([real, predicted.float().clamp(0, 1)], dim=3)   # (B, H, 64, 128, 3)
        writer.add_video("imagination/real_vs_imagined", side_by_side.permute(0, 1, 4, 2, 3).cpu(), self.step, fps=8)
        latents = self.world_model.encode_sample(obs[:, :context])
        reconstruction = self.world_model.decode(latents).float().clamp(0, 1)
        pairs = torch.cat([obs[:, :context].float() / 255.0, reconstruction], dim=2)  # real above reconstruction
        writer.add_images("reconstruction/real_over_reconstructed", pairs[:, -1].permute(0, 3, 1, 2).cpu(), self.step)


def make_trainer(cfg: DictConfig) -> RunTrainer:
    """The training loop of the config's model family (BasicSettings.model)."""
    if cfg.BasicSettings.model == "REM":
        from sub_models.rem.trainer import REMTrainer   # imports this module: loaded on demand
        return REMTrainer(cfg)
    return Trainer(cfg)


@hydra.main(config_path="config_files", config_name="STORM", version_base=None)
def main(raw_cfg: DictConfig) -> None:
    try:
        cfg = load_config(raw_cfg)
    except ConfigError as error:   # one clear line, no traceback (Hydra would print one and a hint)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if cfg.BasicSettings.n is None:
        cfg.BasicSettings.n = default_run_name(cfg)
    trainer = make_trainer(cfg)
    latest = trainer.dirs.latest_checkpoint()
    if latest is not None and cfg.BasicSettings.Resume == "fresh":
        trainer.dirs.move_aside()
    elif latest is not None:
        trainer.restore(latest)
        print(f"Resuming run {cfg.BasicSettings.n} from step {trainer.step} ({latest}); "
              "pass BasicSettings.Resume=fresh to start over", flush=True)
    else:
        print(f"Starting run {cfg.BasicSettings.n} ({cfg.BasicSettings.model}): {trainer.start_message()}; "
              f"TensorBoard: {trainer.dirs.logs}", flush=True)
    finished = trainer.finished_message()
    if finished is not None:
        trainer.envs.close()
        print(f"Run {cfg.BasicSettings.n} {finished}; nothing to do.")
        return
    trainer.run()


if __name__ == "__main__":
    main()
