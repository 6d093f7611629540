"""Classify with an exported ONNX model using numpy, Pillow and onnxruntime only: no torch, no fastai.

For deployments that cannot carry torch (a small container, a web service): the
model file holds the run's normalisation, class names and TTA settings (`kmnist-fa
export`), and inputs go through the same readers and image framing as `kmnist-fa
predict` (`data.images.collect_inputs`: MNIST-format files, folders, PNG/JPG with
inversion of dark-on-light drawings). TTA is not baked into the graph but done here,
as the file's settings say unless told otherwise: `n` passes of the `light` preset's
augmentation (shift ±2 px, rotation ±15°, done with Pillow) averaged, then blended
with the clean pass by the file's clean-pass weight. Each image's draws come from a
generator seeded by the seed and that image's pixels, so an image gets the same
probabilities alone or among any others. The draws differ from fastai's, so TTA
probabilities match `kmnist-fa predict --tta` in spirit, not to the digit; without TTA
they match `--no-tta` (tested).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..config.options import TtaSettings
from ..core.errors import DataError, OptionError
from ..core.predictions import image_seed, prediction_rows
from ..data.images import collect_inputs


class OnnxClassifier:
    """An exported model and what its metadata says: class names, characters, source runs, TTA settings."""

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for garbage files
            raise DataError(f"{self.path}: not a loadable ONNX model ({type(e).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.classes = json.loads(meta["kmnist_fa.classes"])
            self.chars = json.loads(meta["kmnist_fa.chars"])
            self.members = json.loads(meta["kmnist_fa.members"])
        except (KeyError, ValueError):
            raise DataError(f"{self.path}: not exported by kmnist-fa (no class names in its metadata)") from None
        if not (isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes)):
            raise DataError(f"{self.path}: its class names are not a list of strings")
        try:  # the exported run's TTA settings; files exported before they were recorded take the defaults
            self.tta = TtaSettings.from_json(json.loads(meta.get("kmnist_fa.tta", "{}")), f"{self.path} metadata")
        except ValueError:
            raise DataError(f"{self.path}: its TTA settings are not JSON") from None
        self.name = self.path.name

    def settings(self, tta: bool | None = None, n: int | None = None) -> TtaSettings:
        """The file's TTA settings, with TTA switched on or off by `tta` and its passes set by `n` when given;
        its runs are combined by the mean inside the graph (`kmnist-fa export`), whatever method they shipped with."""
        return override(self.tta, tta, n, "mean")

    def predict_probs(self, images: np.ndarray, bs: int = 256, *, tta: bool | None = None, n: int | None = None,
                      seed: int = 42) -> np.ndarray:
        """Class probabilities (N x C) for uint8 or [0, 255] float images, N x 28 x 28 or N x 1 x 28 x 28,
        with the file's TTA settings unless `tta` or `n` says otherwise (see the module docstring)."""
        s = self.settings(tta, n)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise OptionError(f"--seed must be a whole number of at least 0, got {seed!r}")
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        clean = self._run(x, bs)
        if not s.on:
            return clean
        aug = np.mean([self._run(_shift_rotate(x, [np.random.default_rng(image_seed(seed, k, img.tobytes()))
                                                   for img in x]), bs) for k in range(s.n)], axis=0)
        return aug + s.beta * (clean - aug)

    def _run(self, x: np.ndarray, bs: int) -> np.ndarray:
        return np.concatenate([self.session.run(["probs"], {"images": x[i:i + bs]})[0]
                               for i in range(0, len(x), bs)])


def _shift_rotate(x: np.ndarray, rngs: list[np.random.Generator]) -> np.ndarray:
    """The `light` augmentation: each image shifted up to ±2 px and rotated up to ±15°, black fill, drawn from
    its own generator."""
    from PIL import Image

    out = np.empty_like(x)
    for i, (img, rng) in enumerate(zip(x, rngs)):
        dx, dy = rng.uniform(-2, 2, size=2)
        im = Image.fromarray(img, mode="F")
        out[i] = np.asarray(im.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, translate=(dx, dy)))
    return out


def override(base: TtaSettings, tta: bool | None, n: int | None, method: str | None = None) -> TtaSettings:
    """`base` (a run's, a file's or the shipped default's TTA settings) with the command line's `--tta/--no-tta`,
    `--tta-n` and `--method` where given (None: keep `base`'s)."""
    return dataclasses.replace(base, on=base.on if tta is None else tta, n=base.n if n is None else n,
                               method=method or base.method)


def onnx_model(models: list[str] | None) -> str | None:
    """The ONNX file among `--model` values, or None when they name runs; an ONNX file predicts alone."""
    onnx = [m for m in models or [] if m.endswith(".onnx")]
    if onnx and len(models) > 1:
        raise OptionError("--model FILE.onnx: predicts alone (export several runs into one graph with "
                          "`kmnist-fa export RUN RUN`)")
    return onnx[0] if onnx else None


def classify(model: str | Path, inputs: list[str | Path], invert: str = "auto", tta: bool | None = None,
             n: int | None = None, seed: int = 42) -> list[dict]:
    """The rows of `kmnist-fa predict --json` (id, class, name, char, prob) for every readable input, with the
    file's TTA settings unless `tta` or `n` says otherwise; unreadable inputs are left out."""
    clf = OnnxClassifier(model)
    got = collect_inputs(list(inputs), invert)
    return prediction_rows(got.ids, clf.predict_probs(got.images, tta=tta, n=n, seed=seed), clf.classes, clf.chars)
