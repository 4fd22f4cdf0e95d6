"""Time one training step of the real models: world-model update, imagination + agent
update, and acting, on random data of the configured sizes. Prints seconds per phase and
the implied env steps/s of train.py after the warm-up (environment time excluded).

    python tools/benchmarks/throughput.py                       # full size (paper config), STORM
    python tools/benchmarks/throughput.py --config GITSTORM --device cuda
    python tools/benchmarks/throughput.py --config GITSTORM --override +preset=cpu
    python tools/benchmarks/throughput.py --config GITSTORM_DMC --continuous --actions 6
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import compose_config  # noqa: E402
from agents import build_models  # noqa: E402
from utils import select_device, use_bf16  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="STORM", help="config name in config_files/ (STORM, GITSTORM, ...)")
    parser.add_argument("--override", action="append", default=[], help="Hydra override, repeatable")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--actions", type=int, default=18,
                        help="action count (Atari full set: 18) or, with --continuous, action dimensions (walker: 6)")
    parser.add_argument("--continuous", action="store_true", help="continuous actions in [-1, 1] (DMC)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cfg = compose_config(args.config, args.override)
    train = cfg.JointTrainAgent
    device = select_device(args.device)
    bf16 = use_bf16(cfg.BasicSettings.MixedPrecision, device)
    torch.manual_seed(0)
    discrete = not args.continuous
    world_model, agent = build_models(cfg, args.actions, discrete, device, bf16)
    size = cfg.BasicSettings.ImageSize

    def batch(b, t):
        actions = (torch.randint(0, args.actions, (b, t), device=device) if discrete
                   else torch.rand(b, t, args.actions, device=device) * 2 - 1)
        return (torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, device=device), actions,
                torch.randn(b, t, device=device), torch.zeros(b, t, device=device))

    wm_batch = batch(train.BatchSize, train.BatchLength)
    context = batch(train.ImagineBatchSize, train.ImagineContextLength)
    history = batch(train.NumEnvs, train.RealityContextLength)

    def imagine_and_update():
        rollout = world_model.imagine(context[0], context[1], agent.policy, train.ImagineBatchLength)
        agent.update(rollout)

    def act():
        latents = world_model.encode_sample(history[0])
        z, h = world_model.act_state(latents, history[1])
        agent.policy(z, h).cpu()

    world_model_s = timed(lambda: world_model.update(*wm_batch), args.repeats, device)
    agent_s = timed(imagine_and_update, args.repeats, device)
    act_s = timed(act, args.repeats, device)
    total = (world_model_s / train.TrainDynamicsEverySteps + agent_s / train.TrainAgentEverySteps + act_s)
    steps_per_s = train.NumEnvs / total
    print(f"config {args.config} {' '.join(args.override)} | device {device}{' bf16' if bf16 else ''} | "
          f"world model {sum(p.numel() for p in world_model.parameters()) / 1e6:.2f}M params")
    print(f"world-model update ({train.BatchSize}x{train.BatchLength}): {world_model_s * 1e3:8.1f} ms")
    print(f"imagination ({train.ImagineBatchSize}x{train.ImagineContextLength}+{train.ImagineBatchLength})"
          f" + agent update: {agent_s * 1e3:8.1f} ms")
    print(f"acting ({train.NumEnvs} env, context {train.RealityContextLength}): {act_s * 1e3:8.1f} ms")
    print(f"=> {steps_per_s:.2f} env steps/s after warm-up; {train.SampleMaxSteps:,} steps would take "
          f"{(train.SampleMaxSteps - train.BufferWarmUp) / steps_per_s / 3600:.1f} h (environment time excluded)")


if __name__ == "__main__":
    main()
