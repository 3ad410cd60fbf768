"""Evaluation pictures as HxWx3 uint8 arrays, which trackers log and save as PNG files.

matplotlib draws off-screen (the Agg backend): no display is needed, and nothing here touches
pyplot's global figure state, so plots from a training loop never leak or pile up.
"""

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bigjax import metrics


def _render(fig: Figure) -> np.ndarray:
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_matrix(counts_CxC: np.ndarray) -> np.ndarray:
  """Counts, true class down and predicted class across, shaded by each true class's share."""
  C = counts_CxC.shape[0]
  share_CxC = counts_CxC / np.maximum(counts_CxC.sum(1, keepdims=True), 1)
  size = 2 + 0.45 * C
  fig = Figure(figsize=(size, size), dpi=80)
  ax = fig.add_subplot()
  ax.imshow(share_CxC, cmap="Blues", vmin=0, vmax=1)
  for i in range(C):
    for j in range(C):
      ax.text(j, i, f"{counts_CxC[i, j]:.0f}", ha="center", va="center", fontsize=8,
              color="white" if share_CxC[i, j] > 0.5 else "black")
  ax.set(xticks=range(C), yticks=range(C), xlabel="predicted", ylabel="true",
         title=f"accuracy {np.trace(counts_CxC) / counts_CxC.sum():.4f}")
  fig.tight_layout()
  return _render(fig)


def roc_curves(positives_CxN: np.ndarray, negatives_CxN: np.ndarray) -> np.ndarray:
  """One-vs-rest ROC curve of every class, with its AUC in the legend."""
  fig = Figure(figsize=(5, 5), dpi=80)
  ax = fig.add_subplot()
  for c, (positives_N, negatives_N) in enumerate(zip(positives_CxN, negatives_CxN)):
    fpr, tpr = metrics.roc_curve(positives_N, negatives_N)
    ax.plot(fpr, tpr, lw=1, label=f"{c}: {metrics.roc_auc(positives_N, negatives_N):.4f}")
  ax.plot([0, 1], [0, 1], "k:", lw=0.5)
  ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one vs rest)")
  ax.legend(fontsize=7, loc="lower right", title="class: AUC", title_fontsize=7)
  fig.tight_layout()
  return _render(fig)


def image_grid(images_BxHxWxC: np.ndarray, columns: int = 8, scale: int = 4) -> np.ndarray:
  """Images in [0, 1] tiled row by row with 1-pixel gaps, each pixel repeated `scale` times."""
  B, H, W, C = images_BxHxWxC.shape
  rows = -(-B // columns)
  grid = np.ones((rows * (H + 1) + 1, columns * (W + 1) + 1, C), np.float32)
  for i, image_HxWxC in enumerate(np.clip(images_BxHxWxC, 0, 1)):
    r, c = divmod(i, columns)
    grid[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = image_HxWxC
  grid = np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)
  return (np.broadcast_to(grid, grid.shape[:2] + (3,)) * 255).round().astype(np.uint8)
