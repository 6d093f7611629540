"""Prediction inputs: MNIST-format files, dataset test splits, folders and image files.

Image files of any size and mode are turned into what KMNIST looks like: grayscale,
white ink on black, the character's bounding box scaled to fill a 28x28 frame. A
drawing with dark ink on a light background (a scan, a canvas) is inverted first;
`invert="auto"` decides by the border, which is background in both conventions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..core.files import check_input, open_input
from ..core.formats import read_array
from .datasets import DATASETS, load_dataset

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
INVERT_MODES = ("auto", "yes", "no")
MAX_PIXELS = 40_000_000  # refuse decompression bombs before they eat the machine's memory
MAX_SIDE = 1024  # framing pads to a square: long thin images are shrunk to this first


@dataclass
class Inputs:
    """Images to predict, their ids for the CSV, and the inputs that could not be read."""

    images: np.ndarray
    ids: list[str]
    errors: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None


def needs_invert(gray: np.ndarray) -> bool:
    """True for dark ink on a light background: the border is mostly bright."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(np.median(border)) > 127


def frame(gray: np.ndarray, invert: str = "auto", size: int = 28, margin: int = 1) -> np.ndarray:
    """A uint8 grayscale array of any size -> 28x28, white ink on black, character framed."""
    from PIL import Image

    if invert not in INVERT_MODES:
        raise DataError(f"--invert must be one of {', '.join(INVERT_MODES)}, got {invert!r}")
    g = gray.astype(np.uint8)
    if invert == "yes" or (invert == "auto" and needs_invert(g)):
        g = 255 - g
    if g.shape == (size, size):
        return g  # already MNIST-framed: leave it exactly as it is
    ink = g > 40  # its bounding box from the rows and columns holding ink: ~1 byte a pixel, not argwhere's 16
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if len(rows):
        g = g[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = g.shape
    if max(h, w) > MAX_SIDE:  # a 40,000,000x1 strip would otherwise be padded to a 40,000,000^2 square
        scale = MAX_SIDE / max(h, w)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
        g = np.asarray(Image.fromarray(g).resize((w, h), Image.BOX))
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = g
    inner = size - 2 * margin
    small = np.asarray(Image.fromarray(square).resize((inner, inner), Image.LANCZOS))
    out = np.zeros((size, size), np.uint8)
    out[margin:margin + inner, margin:margin + inner] = small
    return out


def decode_image(source, name: str, invert: str = "auto") -> np.ndarray:
    """Image bytes or an open binary file (any size/mode) -> framed 28x28 uint8; unreadable ones raise DataError."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                gray = _gray(im, name)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise DataError(f"{name}: not a readable image ({type(e).__name__})") from None
    return frame(gray, invert)


def _gray(im, name: str) -> np.ndarray:
    """A PIL image of any mode -> uint8 grayscale; a transparent drawing is composited on white."""
    from PIL import Image

    if im.width * im.height > MAX_PIXELS:
        raise DataError(f"{name}: image is {im.width}x{im.height}, larger than kmnist-fa accepts")
    im.load()
    if im.mode in ("RGBA", "LA", "P"):
        im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
    return np.asarray(im.convert("L"))


def read_image(path: str | Path, invert: str = "auto") -> np.ndarray:
    """One image file -> framed 28x28 uint8; unreadable files raise DataError."""
    with open_input(path, DataError) as f:
        return decode_image(f, str(path), invert)


def image_array(x, invert: str = "auto") -> np.ndarray:
    """What fastai users hand to `learn.predict` -> framed 28x28 uint8, as `kmnist-fa predict` reads it.

    A PIL image, a file path, image bytes, or a 2-D array/tensor (uint8 0..255, or
    float 0..1; leading axes of size 1 are dropped).
    """
    from PIL import Image

    if isinstance(x, (str, Path)):
        return read_image(x, invert)
    if isinstance(x, bytes):
        return decode_image(x, "image bytes", invert)
    if isinstance(x, Image.Image):
        return frame(_gray(x, "image"), invert)
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or a.size == 0 or a.dtype.kind not in "biuf":
        raise DataError(f"image: expected a 2-D grayscale array, got shape {a.shape} of {a.dtype}")
    if a.size > MAX_PIXELS:
        raise DataError(f"image: {a.shape[0]}x{a.shape[1]} is larger than kmnist-fa accepts")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError("image: the array holds NaN or infinite values")
        a = a * 255 if a.max() <= 1 else a
    return frame(np.clip(np.rint(a) if a.dtype.kind == "f" else a, 0, 255).astype(np.uint8), invert)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def collect_inputs(inputs: list[str | Path], invert: str = "auto") -> Inputs:
    """Resolve INPUT arguments in order; unreadable image files are reported, not fatal.

    An MNIST-format file, a dataset name or a folder of MNIST files gives Ids
    0..N-1 (positions, as a Kaggle submission expects); image files give their file
    names. Mixing the two kinds is refused because the Ids would collide.
    """

    images, ids, errors, labels = [], [], [], []
    positional = named = False
    for raw in inputs:
        p = Path(raw)
        if p.exists() and not p.is_dir():  # named on purpose, a FIFO or device is refused, not read or skipped
            check_input(p, DataError)
        if p.is_file() and (p.suffix.lower() not in IMAGE_EXTS):
            arr = read_array(p, 3)
            images.append(arr)
            positional = True
            labels.append(None)
        elif p.is_dir() and not _image_files(p):
            d = load_dataset(data=p)
            images.append(d.test_x)
            labels.append(d.test_y)
            positional = True
        elif not p.exists() and str(raw) in DATASETS:
            d = load_dataset(str(raw))
            images.append(d.test_x)
            labels.append(d.test_y)
            positional = True
        else:
            files = _image_files(p) if p.is_dir() else [p]
            for f in files:
                try:
                    images.append(read_image(f, invert)[None])
                    # a file name that is not UTF-8 keeps its bytes visibly (\xff) in the CSV's Id
                    ids.append(f.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))
                    named = True
                except DataError as e:
                    errors.append(str(e))
    if positional and named:
        raise DataError("INPUT: mix of MNIST-format files and image files; predict them in separate calls")
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise DataError(f"INPUT: {i} is named twice (in different folders?); the CSV's Ids must be unique")
        seen.add(i)
    arr = np.concatenate(images) if images else np.zeros((0, 28, 28), np.uint8)
    if positional:
        lab = None if any(x is None for x in labels) else np.concatenate(labels)
        return Inputs(arr, [str(i) for i in range(len(arr))], errors, lab)
    return Inputs(arr, ids, errors)
