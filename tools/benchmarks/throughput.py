"""How fast the training step is, three ways.

phases (default): one world-model update, one imagination + agent update and one acting
step of the real models on random data of the configured sizes; prints milliseconds per
phase and the implied env steps/s after the warm-up (environment time excluded).

    python tools/benchmarks/throughput.py                       # full size (paper config), STORM
    python tools/benchmarks/throughput.py --config STORM,GITSTORM   # both, side by side, with the ratio
    python tools/benchmarks/throughput.py --config STORM,GITSTORM --compile   # the same, compiled
    python tools/benchmarks/throughput.py --config GITSTORM --device cuda
    python tools/benchmarks/throughput.py --config GITSTORM --override +preset=cpu
    python tools/benchmarks/throughput.py --config GITSTORM_DMC --continuous --actions 6

--loop: train.py's own loop (Trainer.run) on a real game: the warm-up, then --steps timed
env steps with the phase split (acting, env, world-model update, imagination + agent
update; each phase waits for the device at its end) and the operator launches per env step
counted by torch.profiler over --profile-steps steps (on a GPU: kernel launches too, what
CUDA graphs remove).

    python tools/benchmarks/throughput.py --loop --config GITSTORM --env ALE/Boxing-v5 --steps 200

--compile-check: the same fixed batch and seed through the eager and the compiled
(BasicSettings.Compile) world-model loss, imagination and agent loss: the losses side by
side, then the time per phase of both.

    python tools/benchmarks/throughput.py --compile-check --config GITSTORM --override +preset=cpu
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import compose_config  # noqa: E402
from agents import build_models  # noqa: E402
from utils import select_device, use_bf16  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernels, compilation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


class Phases:
    """The three phases of a training step on random data of the config's sizes."""

    def __init__(self, cfg, args, device: torch.device, seed: int = 0):
        self.train, self.device, self.args = cfg.JointTrainAgent, device, args
        self.bf16 = use_bf16(cfg.BasicSettings.MixedPrecision, device)
        torch.manual_seed(seed)
        self.discrete = not args.continuous
        self.world_model, self.agent = build_models(cfg, args.actions, self.discrete, device, self.bf16)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        size = cfg.BasicSettings.ImageSize

        def batch(b, t):
            actions = (torch.randint(0, args.actions, (b, t), generator=generator) if self.discrete
                       else torch.rand(b, t, args.actions, generator=generator) * 2 - 1)
            obs = torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, generator=generator)
            return tuple(x.to(device) for x in (obs, actions, torch.randn(b, t, generator=generator),
                                               torch.zeros(b, t)))

        self.wm_batch = batch(self.train.BatchSize, self.train.BatchLength)
        self.context = batch(self.train.ImagineBatchSize, self.train.ImagineContextLength)
        history = batch(self.train.NumEnvs, self.train.RealityContextLength)
        self.latent_history = self.world_model.encode_sample(history[0])
        self.action_history = history[1]

    def world_model_update(self):
        return self.world_model.update(*self.wm_batch)

    def imagine_and_update(self):
        rollout = self.world_model.imagine(self.context[0], self.context[1], self.agent.policy,
                                           self.train.ImagineBatchLength)
        return rollout, self.agent.update(rollout)

    def act(self):
        # what EnvActor.act does per env step: act on the kept posterior latents, encode the new frame
        z, h = self.world_model.act_state(self.latent_history, self.action_history)
        self.world_model.encode_sample(self.wm_batch[0][:self.train.NumEnvs, 0])
        return self.agent.policy(z, h).cpu()


def phases_mode(cfg, args, device, config_name):
    """Times the three phases; returns (world-model update, imagination + agent update, acting) seconds."""
    train = cfg.JointTrainAgent
    phases = Phases(cfg, args, device)
    if args.compile:   # BasicSettings.Compile; the first (timed-out) call of each phase compiles
        phases.world_model.compile_hot_paths()
        phases.agent.compile_hot_paths()
    world_model_s = timed(phases.world_model_update, args.repeats, device)
    agent_s = timed(phases.imagine_and_update, args.repeats, device)
    act_s = timed(phases.act, args.repeats, device)
    total = (world_model_s / train.TrainDynamicsEverySteps + agent_s / train.TrainAgentEverySteps + act_s)
    steps_per_s = train.NumEnvs / total
    print(f"config {config_name} {' '.join(args.override)} | device {device}{' bf16' if phases.bf16 else ''} | "
          f"{'compiled' if args.compile else 'eager'} | "
          f"{torch.get_num_threads()} thread(s) | world model "
          f"{sum(p.numel() for p in phases.world_model.parameters()) / 1e6:.2f}M params")
    print(f"world-model update ({train.BatchSize}x{train.BatchLength}): {world_model_s * 1e3:8.1f} ms")
    print(f"imagination ({train.ImagineBatchSize}x{train.ImagineContextLength}+{train.ImagineBatchLength})"
          f" + agent update: {agent_s * 1e3:8.1f} ms")
    print(f"acting ({train.NumEnvs} env, context {train.RealityContextLength}): {act_s * 1e3:8.1f} ms")
    print(f"=> {steps_per_s:.2f} env steps/s after warm-up; {train.SampleMaxSteps:,} steps would take "
          f"{(train.SampleMaxSteps - train.BufferWarmUp) / steps_per_s / 3600:.1f} h (environment time excluded)")
    return world_model_s, agent_s, act_s


def compile_check_mode(cfg, args, device):
    """Eager and compiled on the same weights, batch and RNG state: losses side by side, then speed."""
    import torch._inductor.config as inductor_config
    inductor_config.fallback_random = True   # compiled code draws the same random numbers as eager
    eager, compiled = Phases(cfg, args, device), Phases(cfg, args, device)
    compiled.world_model.compile_hot_paths()
    compiled.agent.compile_hot_paths()
    figures = {}
    for name, phases in (("eager", eager), ("compiled", compiled)):
        torch.manual_seed(1)
        start = time.perf_counter()
        wm_metrics, _ = phases.world_model_update()
        rollout, (agent_metrics, _) = phases.imagine_and_update()
        figures[name] = {**{k: v.item() for k, v in wm_metrics.items()},
                         "imagination/reward_mean": rollout.rewards.mean().item(),
                         **{k: v.item() for k, v in agent_metrics.items()},
                         "seconds (first call, compilation included)": time.perf_counter() - start}
    print(f"config {args.config} {' '.join(args.override)} | device {device} | {torch.get_num_threads()} thread(s)")
    print(f"{'figure':45s} {'eager':>14s} {'compiled':>14s} {'rel. diff':>10s}")
    for key in figures["eager"]:
        a, b = figures["eager"][key], figures["compiled"][key]
        print(f"{key:45s} {a:14.6g} {b:14.6g} {abs(a - b) / max(abs(a), 1e-12):10.2e}")
    print("\ntime per call after compilation (ms):      eager   compiled")
    for label, method in (("world-model update", "world_model_update"),
                          ("imagination + agent update", "imagine_and_update")):
        e, c = (timed(getattr(p, method), args.repeats, device) for p in (eager, compiled))
        print(f"{label:40s} {e * 1e3:9.1f} {c * 1e3:10.1f}")


def loop_mode(cfg, args, device):
    """train.py's loop on a real game: --steps env steps after the warm-up, timed per phase."""
    from train import PhaseTimer, Trainer
    warmup = cfg.JointTrainAgent.BufferWarmUp
    # the buffer becomes ready after warmup + NumEnvs steps; one untimed step more compiles/warms up
    start_at = warmup + 2 * cfg.JointTrainAgent.NumEnvs
    total = start_at + args.steps
    with tempfile.TemporaryDirectory() as folder:
        cfg.BasicSettings.RunsDir, cfg.BasicSettings.CheckpointDir = f"{folder}/runs", f"{folder}/saved_models"
        cfg.BasicSettings.n = "throughput"
        cfg.JointTrainAgent.SampleMaxSteps = total
        cfg.JointTrainAgent.SaveEverySteps = cfg.JointTrainAgent.LogEverySteps = 10 * total
        cfg.JointTrainAgent.VideoEverySteps = 0
        trainer = Trainer(cfg)
        trainer.timer = PhaseTimer(trainer.device, sync=True)
        profile_from = total - args.profile_steps
        clock = {}
        activities = [torch.profiler.ProfilerActivity.CPU] + (
            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = torch.profiler.profile(activities=activities)

        def after_step():
            if trainer.step == start_at:
                trainer.timer.pop()
                clock["start"] = time.perf_counter()
            if trainer.step == profile_from:
                profiler.start()
            if trainer.step == total:
                profiler.stop()
                clock["end"] = time.perf_counter()

        trainer.run(after_step)
    seconds = clock["end"] - clock["start"]
    phases = trainer.timer.pop()
    events = profiler.key_averages()
    aten_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    print(f"loop: {args.config} {' '.join(args.override)} on {cfg.BasicSettings.env_name} | device {device}"
          f"{' bf16' if trainer.bf16 else ''} | compile {trainer.compiled} | {torch.get_num_threads()} thread(s)")
    print(f"{args.steps} env steps after the warm-up in {seconds:.1f} s: {args.steps / seconds:.2f} env steps/s")
    for phase, spent in phases.items():
        print(f"  {phase:30s} {1e3 * spent / args.steps:9.1f} ms per env step ({100 * spent / seconds:4.1f}%)")
    print(f"profiler over the last {args.profile_steps} steps: {aten_ops / args.profile_steps:,.0f} aten operator "
          f"calls per env step" + (f", {launches / args.profile_steps:,.0f} CUDA kernel launches per env step"
                                    if device.type == "cuda" else ""))
    rate = args.steps / seconds
    print(f"=> an Atari 100k run (102,000 steps) would take {(102000 - warmup) / rate / 3600:.1f} h at this rate")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="STORM",
                        help="config name in config_files/ (STORM, GITSTORM, ...); phases mode: several, comma-separated")
    parser.add_argument("--override", action="append", default=[], help="Hydra override, repeatable")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--actions", type=int, default=18,
                        help="action count (Atari full set: 18) or, with --continuous, action dimensions (walker: 6)")
    parser.add_argument("--continuous", action="store_true", help="continuous actions in [-1, 1] (DMC)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="phases mode: time the compiled hot paths")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--loop", action="store_true", help="time train.py's loop on a real env (--env, --steps)")
    mode.add_argument("--compile-check", action="store_true", help="eager vs compiled: losses and speed")
    parser.add_argument("--env", default="ALE/Boxing-v5", help="--loop: environment (default ALE/Boxing-v5)")
    parser.add_argument("--steps", type=int, default=200, help="--loop: timed env steps after the warm-up")
    parser.add_argument("--profile-steps", type=int, default=5, help="--loop: steps the profiler counts operators over")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loop and not 1 <= args.profile_steps <= args.steps:
        parser.error(f"--profile-steps={args.profile_steps}: expected between 1 and --steps={args.steps}")

    overrides = list(args.override) + ([f"BasicSettings.env_name={args.env}", f"BasicSettings.Device={args.device}"]
                                       if args.loop else [])
    device = select_device(args.device)
    names = args.config.split(",")
    if len(names) > 1 and (args.loop or args.compile_check):
        parser.error("--loop and --compile-check take one --config")
    if args.loop:
        loop_mode(compose_config(args.config, overrides), args, device)
    elif args.compile_check:
        compile_check_mode(compose_config(args.config, overrides), args, device)
    else:
        timings = {name: phases_mode(compose_config(name, overrides), args, device, name) for name in names}
        if len(names) > 1:
            base = names[0]
            for name in names[1:]:
                ratios = [t / b for t, b in zip(timings[name], timings[base])]
                print(f"{name} / {base}: world-model update {ratios[0]:.2f}x, imagination + agent update "
                      f"{ratios[1]:.2f}x, acting {ratios[2]:.2f}x")


if __name__ == "__main__":
    main()
