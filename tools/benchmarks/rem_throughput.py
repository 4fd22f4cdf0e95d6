"""Time each phase of REM's epoch on random data of the configured sizes: one acting step of
collection (tokenize one frame, one controller step), one tokenizer update, one world-model
update (tokenizing its frames with the current tokenizer, as REM does every batch, then the
POP loss, backward and AdamW step), and one controller update (tokenizing its segment, burn-in,
the imagined rollout with POP's two calls per step, the loss and AdamW step); then the
seconds of a whole epoch of REMTrain's update counts.

    python tools/benchmarks/rem_throughput.py                          # paper sizes (config_files/REM.yaml)
    python tools/benchmarks/rem_throughput.py --device cuda
    python tools/benchmarks/rem_throughput.py --override +preset=rem_cpu --threads 1
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from families.rem.acting import ControllerActor  # noqa: E402
from families import compose_config  # noqa: E402
from sub_models.rem import build_rem_models  # noqa: E402
from tools.benchmarks.throughput import timed  # noqa: E402
from utils import select_device  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--override", action="append", default=[], help="Hydra override, repeatable")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--actions", type=int, default=18)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's); 1 on a busy shared CPU avoids OpenMP thrashing")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = compose_config("REM", args.override)
    train, wm_cfg = cfg.REMTrain, cfg.Models.RetNetWorldModel
    device = select_device(args.device)
    torch.manual_seed(0)
    tokenizer, world_model, controller = build_rem_models(cfg, args.actions, True, device).values()
    size, k = cfg.BasicSettings.ImageSize, wm_cfg.TokensPerBlock - 1

    def frames(*shape):
        return torch.randint(0, 256, (*shape, size, size, 3), dtype=torch.uint8, device=device)

    tok_batch = frames(train.TokenizerBatchSize)
    b, t = train.WorldModelBatchSize, train.WorldModelBatchLength
    wm_obs, wm_actions = frames(b, t), torch.randint(0, args.actions, (b, t), device=device)
    wm_rewards, wm_ends = torch.randn(b, t, device=device), torch.zeros(b, t, device=device)

    def world_model_update():
        tokenizer.eval()
        tokens = tokenizer.tokenize(wm_obs)
        world_model.update(tokens, wm_actions, wm_rewards, wm_ends, tokenizer.codebook)

    n_ctx, horizon = wm_cfg.ContextLength, train.ImagineHorizon - wm_cfg.ContextLength + 1
    batch, length = train.ControllerBatchSize, train.ControllerBatchLength
    c_obs, c_actions = frames(batch, length), torch.randint(0, args.actions, (batch, length), device=device)
    c_mask = torch.ones(batch, length, dtype=torch.bool, device=device)

    def controller_update():
        tokens = tokenizer.tokenize(c_obs)
        controller.update(tokens, c_actions, c_mask, world_model, tokenizer.codebook, train.ImagineHorizon, n_ctx)

    actor = ControllerActor(tokenizer, controller, train.NumEnvs, train.CollectTemperature, train.CollectEpsilon)
    env_obs = frames(train.NumEnvs).cpu().numpy()

    act_s = timed(lambda: actor.act(env_obs), args.repeats * 10, device)
    tok_s = timed(lambda: tokenizer.update(tok_batch), args.repeats, device)
    wm_s = timed(world_model_update, args.repeats, device)
    c_s = timed(controller_update, args.repeats, device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    count = lambda module: sum(p.numel() for p in module.parameters()) / 1e6   # noqa: E731
    print(f"REM {' '.join(args.override)} | device {device}{f' ({threads} threads)' if threads else ''} | fp32 | "
          f"tokenizer {count(tokenizer):.2f}M, world model {count(world_model):.2f}M, controller "
          f"{count(controller):.2f}M params, {args.actions} actions")
    print(f"acting step ({train.NumEnvs} env): {act_s * 1e3:10.1f} ms")
    print(f"tokenizer update ({train.TokenizerBatchSize} frames): {tok_s * 1e3:10.1f} ms")
    print(f"world-model update ({b} x {t} blocks = {t * (k + 1)} tokens, incl. tokenizing): {wm_s * 1e3:10.1f} ms")
    print(f"controller update ({batch} x {length} frames, {horizon} imagined steps): {c_s * 1e3:10.1f} ms")
    phases = {"collect": train.CollectStepsPerEpoch * act_s, "tokenizer": train.TokenizerStepsPerEpoch * tok_s,
              "world model": train.WorldModelStepsPerEpoch * wm_s, "controller": train.ControllerStepsPerEpoch * c_s}
    print("=> per epoch (env time excluded): " + ", ".join(f"{name} {sec:.1f} s" for name, sec in phases.items())
          + f"; total {sum(phases.values()):.1f} s (REM reports 12 s + 39 s + 20 s for V, M and C on its GPU)")


if __name__ == "__main__":
    main()
