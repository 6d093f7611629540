"""Classify with an exported ONNX model using numpy, Pillow and onnxruntime only: no torch, no fastai.

For deployments that cannot carry torch (a small container, a web service): the
model file holds the run's normalisation and class names (`kmnist-fa export`), and
inputs go through the same readers and image framing as `kmnist-fa predict`
(`data.images.collect_inputs`: MNIST-format files, folders, PNG/JPG with inversion of
dark-on-light drawings). TTA is not baked into the graph but is a runtime option here:
`tta_n` passes of the `light` preset's augmentation (shift ±2 px, rotation ±15°, done
with Pillow from a seeded NumPy generator) averaged, then blended with the clean pass
(weight 0.25, fastai's `tta` default). Its draws differ from fastai's, so TTA
probabilities match `kmnist-fa predict --tta` in spirit, not to the digit; without TTA
they match `--no-tta` (tested).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config.options import TtaSettings
from ..core.errors import DataError
from ..data.images import collect_inputs


class OnnxClassifier:
    """An exported model and what its metadata says: class names, characters, source runs."""

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

    def predict_probs(self, images: np.ndarray, bs: int = 256, tta_n: int = 0, seed: int = 42) -> np.ndarray:
        """Class probabilities (N x C) for uint8 or [0, 255] float images, N x 28 x 28 or N x 1 x 28 x 28;
        `tta_n` > 0 adds that many augmented passes (see the module docstring)."""
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        clean = self._run(x, bs)
        if tta_n < 1:
            return clean
        rng = np.random.default_rng(seed)
        aug = np.mean([self._run(_shift_rotate(x, rng), bs) for _ in range(tta_n)], axis=0)
        return aug + self.tta.beta * (clean - aug)

    def _run(self, x: np.ndarray, bs: int) -> np.ndarray:
        return np.concatenate([self.session.run(["probs"], {"images": x[i:i + bs]})[0]
                               for i in range(0, len(x), bs)])


def _shift_rotate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The `light` augmentation: each image shifted up to ±2 px and rotated up to ±15°, black fill."""
    from PIL import Image

    out = np.empty_like(x)
    for i, img in enumerate(x):
        dx, dy = rng.uniform(-2, 2, size=2)
        im = Image.fromarray(img.astype(np.float32), mode="F")
        out[i] = np.asarray(im.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, translate=(dx, dy)))
    return out


def classify(model: str | Path, inputs: list[str | Path], invert: str = "auto", tta_n: int = 0,
             seed: int = 42) -> list[dict]:
    """Id, class, name and probability for every readable input (the rows of a submission)."""

    clf = OnnxClassifier(model)
    got = collect_inputs(list(inputs), invert)
    probs = clf.predict_probs(got.images, tta_n=tta_n, seed=seed)
    return [{"id": i, "class": int(p.argmax()), "name": clf.classes[int(p.argmax())], "prob": float(p.max())}
            for i, p in zip(got.ids, probs)]
