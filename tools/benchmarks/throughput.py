"""How fast the training step is, three ways.

phases (default): one world-model update, one imagination + agent update and one acting
step of the real models on random data of the configured sizes; prints milliseconds per
phase and the implied env steps/s after the warm-up (environment time excluded).

    python tools/benchmarks/throughput.py                       # full size (paper config), STORM
    python tools/benchmarks/throughput.py --config STORM,GITSTORM   # both, side by side, with the ratio
    python tools/benchmarks/throughput.py --config STORM,GITSTORM --mode compiled          # the same, compiled
    python tools/benchmarks/throughput.py --config STORM,GITSTORM --mode reduce-overhead   # compiled + CUDA graphs
    python tools/benchmarks/throughput.py --config GITSTORM --device cuda
    python tools/benchmarks/throughput.py --config GITSTORM --override +preset=cpu
    python tools/benchmarks/throughput.py --config GITSTORM_DMC --continuous --actions 6

--loop: train.py's own loop (Trainer.run) on a real game: the warm-up, the operator launches
per env step counted by torch.profiler over --profile-steps steps (on a GPU: kernel and CUDA
graph launches too), then --steps timed env steps with the phase split (acting, env,
world-model update, imagination + agent update; each phase waits for the device at its end).

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

from families import compose_config  # noqa: E402
from agents import build_models  # noqa: E402
from update_steps import MODES, GraphedUpdate, UpdateSteps  # noqa: E402
from utils import select_device, use_bf16  # noqa: E402

# profiler event names of host-side launches: one per kernel, or one per replayed CUDA graph
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")


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


def launch_counts(events) -> dict:
    """aten operator calls, kernel launches and CUDA graph launches in a profiler's key_averages()."""
    return {"aten_ops": sum(e.count for e in events if e.key.startswith("aten::")),
            "kernel_launches": sum(e.count for e in events if e.key in KERNEL_LAUNCHES),
            "graph_launches": sum(e.count for e in events if e.key in GRAPH_LAUNCHES)}


def profiler_activities(device: torch.device) -> list:
    return [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])


class Phases:
    """The three phases of a training step on random data of the config's sizes, the two
    updates run in `mode` (update_steps.MODES; `backend`: torch.compile's)."""

    def __init__(self, cfg, device: torch.device, actions: int = 18, discrete: bool = True, seed: int = 0,
                 mode: str = "eager", backend: str = "inductor"):
        self.train, self.device = cfg.JointTrainAgent, device
        self.bf16 = use_bf16(cfg.BasicSettings.MixedPrecision, device)
        torch.manual_seed(seed)
        self.discrete = discrete
        self.world_model, self.agent = build_models(cfg, actions, discrete, device, self.bf16)
        self.updates = UpdateSteps(self.world_model, self.agent, self.train.ImagineBatchLength, mode, backend)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        size = cfg.BasicSettings.ImageSize

        def batch(b, t):
            actions_ = (torch.randint(0, actions, (b, t), generator=generator) if discrete
                        else torch.rand(b, t, actions, generator=generator) * 2 - 1)
            obs = torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, generator=generator)
            return tuple(x.to(device) for x in (obs, actions_, torch.randn(b, t, generator=generator),
                                               torch.zeros(b, t)))

        self.wm_batch = batch(self.train.BatchSize, self.train.BatchLength)
        self.context = batch(self.train.ImagineBatchSize, self.train.ImagineContextLength)
        history = batch(self.train.NumEnvs, self.train.RealityContextLength)
        self.latent_history = self.world_model.encode_sample(history[0])
        self.action_history = history[1]

    def world_model_update(self):
        return self.updates.world_model_update(*self.wm_batch)

    def imagine_and_update(self):
        return self.updates.agent_update(self.context[0], self.context[1])

    def act(self):
        # what EnvActor.act does per env step: act on the kept posterior latents, encode the new frame
        z, h = self.world_model.act_state(self.latent_history, self.action_history)
        self.world_model.encode_sample(self.wm_batch[0][:self.train.NumEnvs, 0])
        return self.agent.policy(z, h).cpu()


def phases_mode(cfg, args, device, config_name):
    """Times the three phases; returns (world-model update, imagination + agent update, acting) seconds."""
    train = cfg.JointTrainAgent
    # the first (untimed) call of each phase compiles; `timed` warms up once more for CUDA graphs
    phases = Phases(cfg, device, args.actions, not args.continuous, mode=args.mode)
    for _ in range(GraphedUpdate.WARMUP_CALLS if args.mode == "reduce-overhead" else 0):
        phases.world_model_update()
        phases.imagine_and_update()
    world_model_s = timed(phases.world_model_update, args.repeats, device)
    agent_s = timed(phases.imagine_and_update, args.repeats, device)
    act_s = timed(phases.act, args.repeats, device)
    total = (world_model_s / train.TrainDynamicsEverySteps + agent_s / train.TrainAgentEverySteps + act_s)
    steps_per_s = train.NumEnvs / total
    print(f"config {config_name} {' '.join(args.override)} | device {device}{' bf16' if phases.bf16 else ''} | "
          f"{args.mode} | "
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
    discrete = not args.continuous
    eager = Phases(cfg, device, args.actions, discrete, mode="eager")
    compiled = Phases(cfg, device, args.actions, discrete, mode="compiled")
    figures = {}
    for name, phases in (("eager", eager), ("compiled", compiled)):
        torch.manual_seed(1)
        start = time.perf_counter()
        wm_metrics, _ = phases.world_model_update()
        agent_metrics, _ = phases.imagine_and_update()
        figures[name] = {**{k: v.item() for k, v in wm_metrics.items()},
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


class TimeUp(Exception):
    """Raised from the loop's after-step hook when the measurement is done."""


def run_loop(cfg, steps: int | None = None, seconds: float | None = None, profile_steps: int = 5,
             stop_by: float | None = None) -> dict:
    """train.py's loop (Trainer.run) on cfg's env: the warm-up (random steps until the buffer is
    ready, then enough updates to compile and capture), `profile_steps` steps under
    torch.profiler, then `steps` env steps or as many as fit in `seconds` and before the clock
    time `stop_by` (time.time()), timed per phase."""
    from run_trainer import PhaseTimer
    from families.storm.trainer import Trainer
    train = cfg.JointTrainAgent
    # the buffer becomes ready after warmup + NumEnvs steps; then the updates that compile / capture
    start_at = train.BufferWarmUp + (GraphedUpdate.WARMUP_CALLS + 2) * train.NumEnvs
    timed_from = start_at + profile_steps * train.NumEnvs
    end = timed_from + steps * train.NumEnvs if steps else None
    with tempfile.TemporaryDirectory() as folder:
        cfg.BasicSettings.RunsDir, cfg.BasicSettings.CheckpointDir = f"{folder}/runs", f"{folder}/saved_models"
        cfg.BasicSettings.n = "throughput"
        cfg.JointTrainAgent.SampleMaxSteps = 10 ** 9       # the hook below ends the loop
        cfg.JointTrainAgent.SaveEverySteps = cfg.JointTrainAgent.LogEverySteps = 10 ** 9
        cfg.JointTrainAgent.VideoEverySteps = 0
        built = time.perf_counter()
        trainer = Trainer(cfg)
        trainer.timer = PhaseTimer(trainer.device, sync=True)
        profiler = torch.profiler.profile(activities=profiler_activities(trainer.device))
        clock = {}

        def after_step():
            if trainer.step == start_at:
                clock["warm_up"] = time.perf_counter() - built
                profiler.start()
            if trainer.step == timed_from:
                profiler.stop()
                trainer.timer.pop()
                clock["start"] = time.perf_counter()
            if trainer.step > timed_from and (trainer.step == end or (
                    seconds is not None and time.perf_counter() - clock["start"] >= seconds)
                    or (stop_by is not None and time.time() >= stop_by)):
                clock["end"] = time.perf_counter()
                raise TimeUp

        try:
            trainer.run(after_step)
        except TimeUp:
            pass
    elapsed = clock["end"] - clock["start"]
    timed_steps = trainer.step - timed_from
    counts = launch_counts(profiler.key_averages())
    rate = timed_steps / elapsed
    return {"config": cfg.BasicSettings.model, "env": cfg.BasicSettings.env_name, "device": str(trainer.device),
            "bf16": trainer.bf16, "mode": trainer.update_steps.mode, "threads": torch.get_num_threads(),
            "warm_up_steps": start_at, "warm_up_s": clock["warm_up"], "timed_steps": timed_steps,
            "timed_s": elapsed, "env_steps_per_s": rate,
            "ms_per_env_step": {phase: 1e3 * spent / timed_steps for phase, spent in trainer.timer.pop().items()},
            "per_env_step": {key: count / (profile_steps * train.NumEnvs) for key, count in counts.items()},
            "profile_steps": profile_steps,
            "hours_for_102k_steps": (clock["warm_up"] + (102_000 - start_at) / rate) / 3600}


def loop_mode(cfg, args):
    """--loop: run_loop, printed."""
    result = run_loop(cfg, steps=args.steps, profile_steps=args.profile_steps)
    print(f"loop: {args.config} {' '.join(args.override)} on {result['env']} | device {result['device']}"
          f"{' bf16' if result['bf16'] else ''} | {result['mode']} | {result['threads']} thread(s)")
    print(f"{result['timed_steps']} env steps after the warm-up in {result['timed_s']:.1f} s: "
          f"{result['env_steps_per_s']:.2f} env steps/s")
    for phase, ms in result["ms_per_env_step"].items():
        print(f"  {phase:30s} {ms:9.1f} ms per env step ({100 * ms * result['timed_steps'] / 1e3 / result['timed_s']:4.1f}%)")
    counts = result["per_env_step"]
    print(f"profiler over {args.profile_steps} steps: {counts['aten_ops']:,.0f} aten operator calls per env step"
          + (f", {counts['kernel_launches']:,.0f} kernel launches and {counts['graph_launches']:,.0f} CUDA graph "
             "launches per env step" if result["device"].startswith("cuda") else ""))
    print(f"=> an Atari 100k run (102,000 steps) would take {result['hours_for_102k_steps']:.1f} h at this rate")


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
    parser.add_argument("--mode", choices=MODES, default="eager",
                        help="phases mode: how the updates run (BasicSettings.Compile: false, true, reduce-overhead)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--loop", action="store_true", help="time train.py's loop on a real env (--env, --steps)")
    mode.add_argument("--compile-check", action="store_true", help="eager vs compiled: losses and speed")
    parser.add_argument("--env", default="ALE/Boxing-v5", help="--loop: environment (default ALE/Boxing-v5)")
    parser.add_argument("--steps", type=int, default=200, help="--loop: timed env steps after the warm-up")
    parser.add_argument("--profile-steps", type=int, default=5, help="--loop: steps the profiler counts operators over")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.loop and args.profile_steps < 1:
        parser.error(f"--profile-steps={args.profile_steps}: expected at least 1")

    overrides = list(args.override) + ([f"BasicSettings.env_name={args.env}", f"BasicSettings.Device={args.device}"]
                                       if args.loop else [])
    device = select_device(args.device)
    names = args.config.split(",")
    if len(names) > 1 and (args.loop or args.compile_check):
        parser.error("--loop and --compile-check take one --config")
    if args.loop:
        loop_mode(compose_config(args.config, overrides), args)
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
