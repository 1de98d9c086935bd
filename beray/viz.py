"""Pictures a person would rather look at than read: contact sheets of clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(clips: list[np.ndarray], titles: list[str], path: str | Path, frames: int = 8) -> Path:
    """One row per clip (uint8 (T, H, W, 3)), ``frames`` evenly spaced frames each, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(clips), frames, figsize=(1.2 * frames, 1.35 * len(clips)), squeeze=False)
    for row, (clip, title) in enumerate(zip(clips, titles)):
        picks = np.linspace(0, len(clip) - 1, frames).round().astype(int)
        for col, t in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(clip[t])
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"t={t}", fontsize=7)
        axes[row, 0].set_ylabel(title, fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return Path(path)
