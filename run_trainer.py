"""The run machinery every model family's training loop shares (RunTrainer): run folders,
device and precision, the training envs, checkpoints and resume, non-finite tracking and the
logging of figures and episodes; and PhaseTimer, the time of each phase of a loop.

A family's loop (families/<family>/trainer.py) subclasses RunTrainer; train.py, the entry point,
builds the loop of the config's family, resumes it and runs it.
"""
import shutil
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from config import config_differences
from env_wrapper import make_vector_env, set_vector_env_state, vector_env_state
from replay_buffer import ReplayBuffer
from utils import (action_spec, atomic_torch_save, describe_device, describe_precision, load_checkpoint_file,
                   rng_state, seed_everything, select_device, set_rng_state, use_bf16, use_deterministic)

CHECKPOINT_GLOB = "checkpoint_*.pt"
# 2: checkpoints also hold the loop's state (envs, observations, actor memory, figures not yet
# logged), so that a resumed run is the run it would have been; 1 (no "format" key) lacks it.
CHECKPOINT_FORMAT = 2


class NonFiniteLossError(RuntimeError):
    pass


class CheckpointError(RuntimeError):
    """A run folder's files cannot be resumed from; the message names the file and the fix."""


class SaveError(RuntimeError):
    """A checkpoint could not be written; the previous one and its files are intact."""


def never() -> bool:
    return False


def readable_size(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds `folder` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


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
    """Time of each phase of the loop (acting, env, world-model update, imagination + agent
    update), summed until `pop`, in seconds.

    On CPU, wall time. On CUDA the host runs ahead of the GPU, so a phase's wall time is only its
    kernel launches, and its GPU work would be billed to whichever phase next waits for the device.
    Instead each phase records a CUDA event on the stream at its start and at its end and gets the
    GPU's time between the two: its own kernels, and while nothing is queued, the host's time in
    it (env steps). The phases then add up to the loop's time, split as the GPU spent it. Reading
    the events waits for the device once per `pop` (at each log), never inside the loop. `sync`
    (benchmarks) also makes every phase wait for the device at its end."""

    def __init__(self, device: torch.device, sync: bool = False):
        self.cuda = device.type == "cuda"
        self.sync = sync and self.cuda
        self.seconds: dict[str, float] = {}
        self.pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []   # CUDA: read at pop
        self.spare_events: list[torch.cuda.Event] = []

    def event(self) -> torch.cuda.Event:
        event = self.spare_events.pop() if self.spare_events else torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @contextmanager
    def __call__(self, phase: str):
        if self.cuda:
            start = self.event()
            yield
            self.pending.append((phase, start, self.event()))
            if self.sync:
                torch.cuda.synchronize()
            return
        start = time.perf_counter()
        yield
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        if self.pending:
            self.pending[-1][2].synchronize()      # events complete in order: all are done now
            for phase, start, end in self.pending:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + start.elapsed_time(end) / 1e3
                self.spare_events += [start, end]
            self.pending = []
        seconds, self.seconds = self.seconds, {}
        return seconds


class RunTrainer(ABC):
    """What every model family's training shares: the run folders, device and precision, the
    training envs, checkpoints and resume (models, optimisers, replay buffer, RNG), and the
    logging of update figures, non-finite updates and episodes. A family's loop subclasses it,
    fills `self.models` (name -> module with its `.optimizer`) and `self.buffer`, and writes `run`
    (families/storm/trainer.py, families/rem/trainer.py)."""

    def __init__(self, cfg: DictConfig, num_envs: int, keep_checkpoints: int, max_non_finite: int):
        self.cfg = cfg
        self.dirs = RunDirectories(cfg)
        self.device = select_device(cfg.BasicSettings.Device)
        self.bf16 = use_bf16(cfg.BasicSettings.MixedPrecision, self.device)
        use_deterministic(cfg.BasicSettings.Deterministic, self.device)
        seed_everything(cfg.BasicSettings.Seed)
        self.keep_checkpoints, self.max_non_finite = keep_checkpoints, max_non_finite

        self.num_envs = num_envs
        self.envs = make_vector_env(cfg.BasicSettings.env_name, num_envs, cfg.BasicSettings.Seed, training=True,
                                    image_size=cfg.BasicSettings.ImageSize, protocol=cfg.BasicSettings.AtariProtocol)
        self.action_space = self.envs.single_action_space
        self.action_dim, self.discrete = action_spec(self.action_space)
        self.models: dict[str, torch.nn.Module] = {}
        self.buffer: ReplayBuffer | None = None
        self.actor = None             # the family's acting rule (ModelFamily.make_actor), with a memory of its own
        self.step = 0                 # env steps summed over envs
        self.episodes = 0
        self.last_return = float("nan")
        self.obs: np.ndarray | None = None                 # (N, H, W, 3): what the actor acts on next
        self.saved_envs: tuple[list, np.ndarray] | None = None   # restored env states and obs, for start_envs
        self.pending: dict[str, list[torch.Tensor]] = {}   # figures since the last log (RunTrainer.flush)
        # Non-finite updates are counted on the device and looked at when logging, so no
        # update waits for the device to say whether it was finite.
        self.non_finite_in_a_row = torch.zeros((), dtype=torch.long, device=self.device)
        self.longest_non_finite_run = torch.zeros((), dtype=torch.long, device=self.device)
        self.timer = PhaseTimer(self.device)

    def start_message(self) -> str:
        precision = describe_precision(self.cfg.BasicSettings.MixedPrecision, self.device, self.bf16)
        return f"{self.cfg.BasicSettings.env_name}, device {describe_device(self.device)}, precision {precision}"

    @abstractmethod
    def finished_message(self) -> str | None:
        """Why there is nothing left to train, or None."""

    @abstractmethod
    def run(self, *, should_stop: Callable[[], bool] = never) -> None:
        """Train until the run's budget is spent, saving checkpoints on the way, or until
        `should_stop()` says so after a step: then save a checkpoint of that step and return."""

    # ------------------------------------------------------------------ checkpoints
    def progress(self) -> dict:
        """Where the loop stands beyond models and buffer: the counters, the envs' state with the
        observations to act on next (None where the envs cannot be saved), the actor's memory and
        the figures not yet logged; a family adds its own counters."""
        return {"step": self.step, "episodes": self.episodes, "last_return": self.last_return,
                "envs": vector_env_state(self.envs), "obs": self.obs, "actor": self.actor.state_dict(),
                "pending": {key: [value.detach().cpu() for value in values] for key, values in self.pending.items()},
                "non_finite": (self.non_finite_in_a_row.cpu(), self.longest_non_finite_run.cpu())}

    def load_progress(self, state: dict) -> None:
        self.step, self.episodes, self.last_return = state["step"], state["episodes"], state["last_return"]
        if state.get("format", 1) < 2:
            return   # the envs start new episodes (start_envs) with a fresh actor
        self.pending = {key: [value.to(self.device) for value in values] for key, values in state["pending"].items()}
        self.non_finite_in_a_row.copy_(state["non_finite"][0])
        self.longest_non_finite_run.copy_(state["non_finite"][1])
        if state["envs"] is not None:   # else as before format 2
            self.saved_envs = state["envs"], state["obs"]
            self.actor.load_state_dict(state["actor"])

    def start_envs(self) -> bool:
        """Set self.obs to what the actor acts on first. True: the envs continue the episodes of
        the checkpoint. False: they start new ones, at a fresh start or where the envs could not
        be saved, reseeded with Seed + step so a resumed run's episodes are not replays of the first."""
        self.obs, _ = self.envs.reset(seed=self.cfg.BasicSettings.Seed + self.step)
        if self.saved_envs is None:
            return False
        states, self.obs = self.saved_envs
        set_vector_env_state(self.envs, states)
        self.saved_envs = None
        return True

    def state(self) -> dict:
        models = {}
        for name, module in self.models.items():
            models[name] = module.state_dict()
            models[f"{name}_optimizer"] = module.optimizer.state_dict()
        return {"format": CHECKPOINT_FORMAT, **self.progress(), **models, "rng": rng_state(self.device),
                "config": OmegaConf.to_container(self.cfg, resolve=True)}

    def save(self) -> None:
        """Buffer first, then the weights, then the checkpoint that names them, each written to a
        temporary file and renamed: a kill or a failed write at any point leaves the previous
        checkpoint and its own buffer file intact. A failed write removes what this save wrote
        and stops the run (SaveError)."""
        folder, step = self.dirs.checkpoints, self.step
        weights = {"step": step, **{name: module.state_dict() for name, module in self.models.items()},
                   "config": OmegaConf.to_container(self.cfg, resolve=True),
                   "action_dim": self.action_dim, "discrete": self.discrete}
        writes = [(self.buffer.save, f"replay_buffer_{step}.pt"),
                  (lambda path: atomic_torch_save(weights, path), f"weights_{step}.pt"),
                  (lambda path: atomic_torch_save(self.state() | {"replay_buffer": f"replay_buffer_{step}.pt"}, path),
                   f"checkpoint_{step}.pt")]
        new = [folder / name for _, name in writes if not (folder / name).exists()]
        try:
            for write, name in writes:
                write(folder / name)
        except OSError as error:
            for path in new:
                path.unlink(missing_ok=True)
            raise SaveError(self.save_failed_message(error)) from None
        superseded = self.dirs.checkpoints_by_step()[:-self.keep_checkpoints]
        # Only the newest checkpoint keeps its buffer (a full one is ~1.2 GB); resuming always
        # starts from the newest, and weights_<step>.pt of every save stay for eval.py.
        superseded += [path for path in folder.glob("replay_buffer_*.pt") if path.name != f"replay_buffer_{step}.pt"]
        for old in superseded:
            try:
                old.unlink()
            except OSError as error:   # the new checkpoint is complete: an old file left over costs only space
                tqdm.write(f"warning: could not remove {old}: {error.strerror or error}")

    def save_failed_message(self, error: OSError) -> str:
        folder, latest = self.dirs.checkpoints, self.dirs.latest_checkpoint()
        kept = (f"{latest.name}, its buffer and weights files are intact" if latest is not None
                else "no earlier checkpoint exists")
        return (f"could not save step {self.step} in {folder}: {error.strerror or error}"
                f"{f' ({error.filename})' if error.filename else ''}; {kept}. A save needs about "
                f"{readable_size(self.checkpoint_bytes())} free there, {readable_size(free_bytes(folder))} are free: "
                f"free space (or move the folder and BasicSettings.CheckpointDir), then re-run the same command to resume")

    def checkpoint_bytes(self, full_buffer: bool = False) -> int:
        """About what one save writes: the buffer file (now, or at capacity), the weights file
        and the checkpoint (the weights again and AdamW's two moments)."""
        parameters = sum(p.numel() * p.element_size() for module in self.models.values() for p in module.parameters())
        return self.buffer.file_bytes(full_buffer) + 4 * parameters

    def free_space_warning(self) -> str | None:
        """Before the run: a save writes the new buffer file before it removes the old one, so the
        disk must hold two full buffers and the checkpoints besides."""
        need, free = 2 * self.checkpoint_bytes(full_buffer=True), free_bytes(self.dirs.checkpoints)
        if free >= need:
            return None
        return (f"warning: {self.dirs.checkpoints} has {readable_size(free)} free, but saving this run needs about "
                f"{readable_size(need)} once the replay buffer is full (two buffer files of "
                f"{readable_size(self.buffer.file_bytes(True))} during a save): the run will stop at the first save that "
                "does not fit (the previous checkpoint stays intact); free space or set BasicSettings.CheckpointDir")

    def restore(self, path: Path) -> None:
        """Load a checkpoint and its buffer file; what cannot be resumed raises CheckpointError
        (one line naming the file and the fix)."""
        fresh = "start over with BasicSettings.Resume=fresh (old outputs are moved aside, weights_<step>.pt kept)"
        try:
            state = load_checkpoint_file(path)
        except RuntimeError as error:
            raise CheckpointError(f"{str(error).splitlines()[0]}; {fresh}") from None
        written_by = state.get("format", 1)
        if written_by > CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} was written by a newer version of this code (checkpoint format {written_by}, "
                                  f"this code reads up to {CHECKPOINT_FORMAT}): update the code, or use another "
                                  "BasicSettings.n")
        model = state["config"]["BasicSettings"]["model"]
        if model != self.cfg.BasicSettings.model:
            raise CheckpointError(f"{path} is a {model} run, this is a {self.cfg.BasicSettings.model} run: resume it with "
                                  f"its own config (--config-name {model}), or use another BasicSettings.n")
        differences = config_differences(state["config"], self.cfg)
        if differences:
            raise CheckpointError(f"{path} was written with a different configuration:\n  " + "\n  ".join(differences)
                                  + "\nUse the original settings, another BasicSettings.n, or BasicSettings.Resume=fresh.")
        for name, module in self.models.items():
            try:
                module.load_state_dict(state[name])
                module.optimizer.load_state_dict(state[f"{name}_optimizer"])
            except (KeyError, RuntimeError, ValueError) as error:
                raise CheckpointError(f"{path}: its {name} does not fit this run's model "
                                      f"({str(error).splitlines()[0]}); use another BasicSettings.n, or {fresh}") from None
        buffer_file = path.parent / state["replay_buffer"]
        try:
            self.buffer.load(buffer_file)
        except (OSError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"{str(error).splitlines()[0]}; {path.name} needs it: put the file back, or "
                                  f"{fresh}") from None
        # Compare every step ever appended, not len(): the buffer stops growing at capacity.
        appended = self.buffer.num_appended * self.num_envs
        if appended != state["step"]:
            raise CheckpointError(f"{buffer_file} has seen {appended} steps but {path.name} is at step {state['step']}: "
                                  f"the run folder is inconsistent; {fresh}")
        self.load_progress(state)
        set_rng_state(state["rng"], self.device)

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
