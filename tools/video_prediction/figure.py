"""A PNG like the paper's figures 5 and 6: real frames above predicted ones at a few steps."""
from pathlib import Path

import numpy as np


def prediction_figure(real: np.ndarray, predicted: np.ndarray, context: int, path: Path, title: str = "",
                      columns: int = 8, dpi: int = 100) -> Path:
    """real, predicted: (N, H, h, w, 3) uint8 future frames of N clips (step context + k at
    index k). Two rows per clip (real, predicted), `columns` steps spread over the horizon,
    the last one included."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips, horizon = real.shape[:2]
    steps = np.unique(np.linspace(0, horizon - 1, min(columns, horizon)).round().astype(int))
    fig, axes = plt.subplots(2 * clips, len(steps), figsize=(1.1 * len(steps) + 0.6, 1.1 * 2 * clips + 0.6),
                             squeeze=False)
    for c in range(clips):
        for j, k in enumerate(steps):
            for row, (frames, label) in enumerate(((real, "real"), (predicted, "predicted"))):
                ax = axes[2 * c + row, j]
                ax.imshow(frames[c, k], interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"clip {c + 1}\n{label}" if row == 0 else label, fontsize=7)
                if c == 0 and row == 0:
                    ax.set_title(f"t = {context + k + 1}", fontsize=7)   # frame number in the clip, 1-based
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=8)
        top = 1.0 - 0.35 / fig.get_figheight()   # room for the title above the column labels
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2, rect=(0, 0, 1, top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
