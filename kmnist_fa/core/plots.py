"""Matplotlib helpers: a Japanese font for hiragana labels, labelled image grids, the lr_find curve.

Matplotlib's default DejaVu font has no kana and draws tofu boxes. The
`matplotlib-fontja` package bundles IPAexGothic, so plots show お き す ... with no
system fonts; if it cannot be loaded, labels fall back to romaji with a warning
instead of drawing boxes.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from .atomic import write_with
from .labels import display_labels


def font_has(char: str, family: str | None = None) -> bool:
    """Whether the font matplotlib would use for `family` has a real glyph for `char`."""
    from matplotlib.font_manager import FontProperties, findfont
    from matplotlib.ft2font import FT2Font

    path = findfont(FontProperties(family=family or matplotlib.rcParams["font.family"]), fallback_to_default=True)
    return FT2Font(path).get_char_index(ord(char)) != 0


@lru_cache(maxsize=1)
def japanese_font() -> bool:
    """Switch matplotlib to a kana-capable font; False (with a warning) if none is available."""
    try:
        import matplotlib_fontja  # noqa: F401  (registers and selects IPAexGothic)
    except ImportError:
        pass
    if font_has("お"):
        return True
    warnings.warn("no Japanese font found (pip install matplotlib-fontja); plots label classes in romaji")
    return False


def kana_font_file() -> Path | None:
    """IPAexGothic as matplotlib-fontja ships it, for pages that must draw kana without a system Japanese font
    (the web demo serves it); None where the package or its font file is missing."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib_fontja")
    f = Path(spec.origin).parent / "fonts" / "ipaexg.ttf" if spec and spec.origin else None
    return f if f is not None and f.is_file() else None


def class_labels(classes: Sequence[str], chars: Sequence[str] | None) -> list[str]:
    """"お o" labels when the characters are known and a font can draw them, else the names."""
    return display_labels(classes, chars) if chars and japanese_font() else list(classes)


def save_fig(fig, path: str | Path, dpi: int = 100) -> Path:
    out = write_with(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(fig)
    return out


def image_grid(images: np.ndarray, titles: Sequence[str], ncols: int = 8, cell: float = 1.3,
               title_size: int = 9, suptitle: str | None = None):
    """A grid of 28x28 uint8 images, white ink on black as KMNIST stores them."""
    japanese_font()
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    title_h = lines * title_size * 1.6 / 72  # inches each row's title needs above its image
    # constrained layout reserves each title's own height, so a row's titles never reach into the row above
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, (cell + title_h) * nrows + (0.4 if suptitle else 0)),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=title_size)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def render_text(text: str, size: int = 40) -> np.ndarray:
    """Rasterise `text` with matplotlib's current font (used to prove glyphs are not tofu boxes)."""
    fig = plt.figure(figsize=(1, 1), dpi=size)
    fig.text(0.5, 0.5, text, fontsize=size * 0.6, ha="center", va="center")
    fig.canvas.draw()
    arr = np.asarray(fig.canvas.buffer_rgba())[..., 0].copy()
    plt.close(fig)
    return arr


def plot_confusion_matrix(cm: np.ndarray, labels: list[str]):
    """A confusion matrix (rows actual, columns predicted) as counts and row-normalised, side by side."""
    japanese_font()
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = len(labels)
    size = max(4.0, 0.45 * k + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    for ax, mat, title, fmt in ((axes[0], cm, "counts", "{:d}"), (axes[1], norm, "row-normalised", "{:.2f}")):
        ax.imshow(mat, cmap="Blues")
        ax.set_title(title)
        ax.set_xticks(range(k), labels, rotation=90)
        ax.set_yticks(range(k), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        if k <= 20:
            thresh = mat.max() / 2
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, fmt.format(mat[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if mat[i, j] > thresh else "black")
    fig.tight_layout()
    return fig


def plot_lr_find(lrs: Sequence[float], losses: Sequence[float], suggestions: dict[str, float], lowest: float):
    """The lr_find curve with each suggestion marked at the learning rate the table prints, under the same
    name and value: fastai marks `minimum` at the lowest loss but suggests a tenth of that learning rate,
    so its plot and its suggestion disagreed by 10x. The lowest loss gets a marker of its own."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses, color="0.35")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss (smoothed)")
    ax.set_title("lr_find: minimum = lr at lowest loss / 10")

    def loss_at(lr: float) -> float:
        return float(np.interp(np.log10(lr), np.log10(lrs), losses))

    for name, lr in suggestions.items():
        ax.plot(lr, loss_at(lr), "o", label=f"{name} {lr:.2e}")
    ax.plot(lowest, loss_at(lowest), "kx", label=f"lowest loss at {lowest:.2e}")
    ax.legend(loc="best")
    fig.tight_layout()
    return fig
