"""The decoder's layers in NCHW and in channels-last memory, side by side (docs/speed.md).

    python tools/benchmarks/memory_layout.py                    # paper size: 1,024 frames, one thread
    python tools/benchmarks/memory_layout.py --frames 64 --threads 2

Per transposed convolution of the paper-size decoder: forward + backward time on an NCHW input
and on a channels-last one (minimum of --repeats calls after a warm-up); then all of the
decoder's layers after its Linear, fed its 4 x 4 map as it runs (channels-last) and in NCHW; and the largest deviation of
BatchNorm's output from a float64 reference in both layouts, on data of mean 5 and standard
deviation 3. The figures go to stdout, one line each.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from sub_models.world_models import Decoder  # noqa: E402

CHANNELS_LAST = torch.channels_last


def fastest(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def forward_backward(module: nn.Module, x: torch.Tensor):
    def call():
        out = module(x)
        out.backward(torch.ones_like(out))
    return call


def batch_norm_deviation(memory_format, frames: int) -> float:
    torch.manual_seed(0)
    x = torch.randn(frames, 32, 32, 32) * 3 + 5
    reference = nn.BatchNorm2d(32).double()(x.double())
    return (nn.BatchNorm2d(32)(x.contiguous(memory_format=memory_format)).double() - reference).abs().max().item()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1024, help="batch of frames (paper: 16 x 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    decoder = Decoder(3, 32, 4, 32, 32)   # paper size: 256 x 4 x 4 -> 64 x 64 x 3
    side = 4
    for layer in (m for m in decoder.deconvs if isinstance(m, nn.ConvTranspose2d)):
        x = torch.randn(args.frames, layer.in_channels, side, side, requires_grad=True)
        nchw = fastest(forward_backward(layer, x), args.repeats)
        channels_last = fastest(forward_backward(layer, x.detach().contiguous(memory_format=CHANNELS_LAST)
                                                 .requires_grad_()), args.repeats)
        print(f"ConvTranspose2d {layer.in_channels}->{layer.out_channels} at {side}x{side}: forward + backward "
              f"{1e3 * nchw:.0f} ms NCHW, {1e3 * channels_last:.0f} ms channels-last ({nchw / channels_last:.2f}x)")
        side *= 2
    # the decoder's layers after its Linear, fed its (N, 256, 4, 4) map in either layout
    top = torch.randn(args.frames, decoder.top, 4, 4, requires_grad=True)
    plain = fastest(forward_backward(decoder.deconvs, top), args.repeats)
    whole = fastest(forward_backward(decoder.deconvs, top.detach().contiguous(memory_format=CHANNELS_LAST)
                                     .requires_grad_()), args.repeats)
    print(f"Decoder forward + backward: {1e3 * plain:.0f} ms on NCHW, {1e3 * whole:.0f} ms as it runs "
          f"(channels-last; {plain / whole:.2f}x)")
    print(f"BatchNorm2d(32) on {args.frames} x 32 x 32 x 32, largest deviation from float64: "
          f"{batch_norm_deviation(torch.contiguous_format, args.frames):.1e} NCHW, "
          f"{batch_norm_deviation(CHANNELS_LAST, args.frames):.1e} channels-last")


if __name__ == "__main__":
    main()
