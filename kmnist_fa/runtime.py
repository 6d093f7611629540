"""Classify with an exported ONNX model using numpy, Pillow and onnxruntime only: no torch, no fastai.

For deployments that cannot carry torch (a small container, a web service): the
model file holds the run's normalisation and class names (`kmnist-fa export`), and
inputs go through the same readers and image framing as `kmnist-fa predict`
(`images.collect_inputs`: MNIST-format files, folders, PNG/JPG with inversion of
dark-on-light drawings). TTA is not baked into the graph; this runtime predicts the
clean pass, which is what `kmnist-fa predict --no-tta` gives.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import DataError


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
        self.name = self.path.name

    def predict_probs(self, images: np.ndarray, bs: int = 256) -> np.ndarray:
        """Class probabilities (N x C) for uint8 or [0, 255] float images, N x 28 x 28 or N x 1 x 28 x 28."""
        x = np.asarray(images, dtype=np.float32).reshape(-1, 28, 28)
        if len(x) == 0:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate([self.session.run(["probs"], {"images": x[i:i + bs]})[0]
                               for i in range(0, len(x), bs)])


def classify(model: str | Path, inputs: list[str | Path], invert: str = "auto") -> list[dict]:
    """Id, class, name and probability for every readable input (the rows of a submission)."""
    from .images import collect_inputs

    clf = OnnxClassifier(model)
    got = collect_inputs(list(inputs), invert)
    probs = clf.predict_probs(got.images)
    return [{"id": i, "class": int(p.argmax()), "name": clf.classes[int(p.argmax())], "prob": float(p.max())}
            for i, p in zip(got.ids, probs)]
