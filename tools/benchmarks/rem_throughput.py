"""Time REM's tokenizer and POP world model (part 1 of the REM port) on random data of the
configured sizes: one tokenizer update, one world-model update (tokenizing its frames with the
current tokenizer, as REM does every batch, then the POP loss, backward and AdamW step), and
one imagination step (POP's two calls) at the controller's batch.

    python tools/benchmarks/rem_throughput.py                          # paper sizes (config_files/REM.yaml)
    python tools/benchmarks/rem_throughput.py --device cuda
    python tools/benchmarks/rem_throughput.py --override +preset=rem_cpu --threads 1
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from config import compose_config  # noqa: E402
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
    train, tok_cfg, wm_cfg = cfg.REMTrain, cfg.Models.Tokenizer, cfg.Models.RetNetWorldModel
    device = select_device(args.device)
    torch.manual_seed(0)
    tokenizer, world_model = build_rem_models(cfg, args.actions, device)
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
    batch = train.ControllerBatchSize
    ctx_tokens = torch.randint(0, tok_cfg.VocabSize, (batch, n_ctx, k), device=device)
    ctx_actions = torch.randint(0, args.actions, (batch, n_ctx - 1), device=device)

    def policy(current):
        return torch.randint(0, args.actions, (current.shape[0],), device=device)

    def imagine():
        world_model.imagine(ctx_tokens, ctx_actions, policy, horizon, tokenizer.codebook)

    tok_s = timed(lambda: tokenizer.update(tok_batch), args.repeats, device)
    wm_s = timed(world_model_update, args.repeats, device)
    imagine_s = timed(imagine, args.repeats, device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    print(f"REM {' '.join(args.override)} | device {device}{f' ({threads} threads)' if threads else ''} | fp32 | "
          f"tokenizer {sum(p.numel() for p in tokenizer.parameters()) / 1e6:.2f}M, "
          f"world model {sum(p.numel() for p in world_model.parameters()) / 1e6:.2f}M params, {args.actions} actions")
    print(f"tokenizer update ({train.TokenizerBatchSize} frames): {tok_s * 1e3:10.1f} ms")
    print(f"world-model update ({b} x {t} blocks = {t * (k + 1)} tokens, incl. tokenizing): {wm_s * 1e3:10.1f} ms")
    print(f"imagination ({batch} x {horizon} steps from {n_ctx} context frames): {imagine_s * 1e3:10.1f} ms "
          f"= {imagine_s / horizon * 1e3:.1f} ms per step (2 calls to M)")
    steps = train.TokenizerStepsPerEpoch * tok_s + train.WorldModelStepsPerEpoch * wm_s
    print(f"=> per epoch: tokenizer {train.TokenizerStepsPerEpoch * tok_s:.0f} s + world model "
          f"{train.WorldModelStepsPerEpoch * wm_s:.0f} s = {steps:.0f} s (REM reports 12 s + 39 s on its GPU); "
          f"imagination for {train.ControllerStepsPerEpoch} controller updates {train.ControllerStepsPerEpoch * imagine_s:.0f} s")


if __name__ == "__main__":
    main()
