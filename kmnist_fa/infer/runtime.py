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
import functools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..config.options import TtaSettings
from ..core.errors import DataError, OptionError
from ..core.files import open_input
from ..core.predictions import image_seed, prediction_rows
from ..data.images import collect_inputs


class OnnxClassifier:
    """An exported model and what its metadata says: class names, characters, source runs, TTA settings.

    The file may come from anyone: it is checked before it runs, and what its runs allocate is capped
    (`_check_ops`, `_check_io`, `_capped_arena`; docs/export-deploy.md), each refusal one DataError.
    """

    def __init__(self, path: str | Path):
        import onnxruntime as ort

        self.path = Path(path)
        with open_input(self.path, DataError) as f:  # one read of a regular file: what is checked is what runs
            model = f.read(MAX_FILE_BYTES + 1)
        if len(model) > MAX_FILE_BYTES:
            raise DataError(f"{self.path}: larger than {MAX_FILE_BYTES >> 20} MiB; not a model kmnist-fa exports")
        _check_ops(self.path, model)
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # its failures become one DataError line, not log lines on stderr
        opts.add_session_config_entry("session.load_model_format", "ONNX")  # the bytes checked, not an ORT file
        opts.add_session_config_entry("session.use_env_allocators", "1")  # run memory from the capped arena
        opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")  # weights: in the file
        _capped_arena()
        try:  # constant folding would run ops while loading, outside the arena's cap
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=["ConstantFolding"])
        except Exception as e:  # onnxruntime raises its own types for garbage files
            raise DataError(f"{self.path}: not a loadable ONNX model ({type(e).__name__})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if not all(k in meta for k in ("kmnist_fa.classes", "kmnist_fa.chars", "kmnist_fa.members")):
            raise DataError(f"{self.path}: not exported by kmnist-fa (no class names in its metadata)")
        self.classes = self._meta(meta, "kmnist_fa.classes")
        self.chars = self._meta(meta, "kmnist_fa.chars")
        self.members = self._meta(meta, "kmnist_fa.members")
        if not (isinstance(self.classes, list) and self.classes and all(isinstance(c, str) for c in self.classes)):
            raise DataError(f"{self.path}: its class names are not a list of strings")
        if self.chars is not None and not (isinstance(self.chars, list) and len(self.chars) == len(self.classes)
                                           and all(isinstance(c, str) for c in self.chars)):
            raise DataError(f"{self.path}: its characters are not a string for each of its {len(self.classes)} "
                            "classes")
        if not (isinstance(self.members, list) and self.members
                and all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in self.members)):
            raise DataError(f"{self.path}: its metadata does not name the runs it was exported from")
        # the exported run's TTA settings; files exported before they were recorded take the defaults
        self.tta = TtaSettings.from_json(self._meta(meta, "kmnist_fa.tta", "{}"), f"{self.path} metadata")
        if self.tta.n > MAX_FILE_TTA_N:
            raise DataError(f"{self.path}: its TTA settings ask for {self.tta.n:,} passes (at most "
                            f"{MAX_FILE_TTA_N:,}; --tta-n sets more)")
        self._check_io()
        self.name = self.path.name

    def _meta(self, meta: dict[str, str], key: str, default: str | None = None):
        """A metadata value's JSON, bounded in size and depth so that a file's metadata cannot cost unbounded
        memory or raise RecursionError."""
        raw = meta.get(key, default)
        if len(raw) > MAX_META_CHARS:
            raise DataError(f"{self.path}: its metadata {key} is over {MAX_META_CHARS >> 10} KiB")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):  # ints over Python's digit limit are ValueErrors too
            raise DataError(f"{self.path}: its metadata {key} is not JSON kmnist-fa wrote") from None

    def _check_io(self) -> None:
        """Refuse a graph that `_run` could not feed or read, before any input is read."""
        ins, outs = self.session.get_inputs(), {o.name: o for o in self.session.get_outputs()}
        if len(ins) != 1 or ins[0].name != "images" or not _fits(ins[0], [None, 28, 28]):
            got = ", ".join(f"{i.name!r} {i.type} {i.shape}" for i in ins[:3])
            raise DataError(f"{self.path}: its graph must take one input, 'images': float, any batch x 28 x 28 "
                            f"(it takes {got[:160] or 'none'})")
        p = outs.get("probs")
        if p is None or not _fits(p, [None, len(self.classes)]):
            got = f"{p.type} {p.shape}" if p else f"outputs {', '.join(repr(n) for n in list(outs)[:3])}"
            raise DataError(f"{self.path}: its graph must output 'probs': float, batch x {len(self.classes)} "
                            f"(its metadata's classes); it has {got[:160]}")

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
        return np.concatenate([self._batch(x[i:i + bs]) for i in range(0, len(x), bs)])

    def _batch(self, x: np.ndarray) -> np.ndarray:
        """One batch's probabilities; a graph that fails or hands back another shape than its declared one (a
        symbolic dimension promises nothing) is the file's fault, said in one line."""
        try:
            probs = self.session.run(["probs"], {"images": x})[0]
        except Exception as e:  # onnxruntime's own types; the arena's cap among them
            reason = (str(e).splitlines() or [""])[0]  # onnxruntime's: where, then why
            raise DataError(f"{self.path}: its graph failed on {len(x)} images ({type(e).__name__}: "
                            f"{'...' if len(reason) > 160 else ''}{reason[-160:]})") from None
        want = (len(x), len(self.classes))
        if not (isinstance(probs, np.ndarray) and probs.dtype == np.float32 and probs.shape == want):
            raise DataError(f"{self.path}: its graph gave 'probs' of shape {getattr(probs, 'shape', '?')} for "
                            f"{len(x)} images, not {want}")
        return probs


def _fits(arg, dims: list[int | None]) -> bool:
    """Whether a graph input or output is float32 with `dims`' rank; None: a dimension that must be symbolic
    (any batch size), an int: that size or a symbolic one."""
    return arg.type == "tensor(float)" and len(arg.shape) == len(dims) and all(
        not isinstance(d, int) if w is None else d == w or not isinstance(d, int) for d, w in zip(arg.shape, dims))


# The ai.onnx ops a classifier's inference graph needs: all those `kmnist-fa export` writes for the built-in
# architectures, alone or as an ensemble (tested), and the common layers of ones registered elsewhere. None
# repeats (Loop, Scan) or builds a tensor whose size is read from data (ConstantOfShape, Expand, Tile, Range,
# Pad, Resize), so refusing every other op leaves a file no loops; the arena's cap bounds what hostile attributes
# or inputs of these (a Conv's pads, a Gather's indices) could still allocate. Time is not bounded: a chain of
# large MatMuls within the cap can still run long (docs/export-deploy.md).
ALLOWED_OPS = frozenset("""
    Abs Add ArgMax AveragePool BatchNormalization Cast Clip Concat Constant Conv Div Dropout Elu Equal Erf Exp
    Flatten Gather Gelu Gemm GlobalAveragePool GlobalMaxPool Greater HardSigmoid HardSwish Identity
    InstanceNormalization LayerNormalization LeakyRelu Less Log LogSoftmax MatMul Max MaxPool Mean Min Mish Mul
    Neg Not Pow PRelu Reciprocal ReduceMax ReduceMean ReduceMin ReduceSum Relu Reshape Shape Sigmoid Slice
    Softmax Softplus Split Sqrt Squeeze Sub Sum Tanh Transpose Unsqueeze Where""".split())
MAX_FILE_BYTES = 512 << 20  # an ensemble of ten xresnet18s is under 450 MiB
MAX_FIELDS = 1 << 20  # protobuf fields read to list a graph's ops: an ensemble of ten xresnet18s has ~10,000
MAX_META_CHARS = 1 << 20  # class names, characters, members: K49's are a few KiB
MAX_RUN_BYTES = 2 << 30  # the arena all sessions' runs share: a 256-image batch of two xresnet18s runs in 256 MiB
MAX_FILE_TTA_N = 1000  # a file's default passes; --tta-n may ask for more


@functools.cache
def _capped_arena() -> None:
    """Register, once per process, the CPU arena that sessions with `session.use_env_allocators` share, capped at
    MAX_RUN_BYTES: an allocation beyond it fails in onnxruntime instead of taking the machine's memory."""
    import onnxruntime as ort

    ort.create_and_register_allocator(
        ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT),
        ort.OrtArenaCfg({"max_mem": MAX_RUN_BYTES, "arena_extend_strategy": 1}))  # 1: grow by what is asked


def _check_ops(path: Path, model: bytes) -> None:
    """Refuse a graph with ops outside ALLOWED_OPS or with model-local functions, read from the protobuf wire
    format (ModelProto.graph = 7, .functions = 25; GraphProto.node = 1) because the runtime does not depend on
    the `onnx` package."""
    budget = iter(range(MAX_FIELDS))  # shared by every message read, so tiny fields by the million cost no time
    try:
        top = list(_fields(memoryview(model), budget))
        if any(number == 25 for number, _ in top):
            raise DataError(f"{path}: its graph defines functions of its own, which the runtime does not run "
                            "(`kmnist-fa export` writes none)")
        ops = set()
        for graph in (g for number, g in top if number == 7):
            for kind, item in _fields(graph, budget):
                if kind == 1:  # a node: its op, and the tensors its attributes hold (Constant's value)
                    ops.add(_op(item, budget))
                    for attr in (a for n, a in _fields(item, budget) if n == 5):
                        _check_tensors(path, attr, {5: False, 10: False, 22: True, 23: True}, budget)
                elif kind in (5, 15):  # initializer, sparse_initializer
                    _check_tensor(path, item, kind == 15, budget)
    except ValueError as e:
        raise DataError(f"{path}: not a loadable ONNX model ({e})") from None
    other = sorted(ops - ALLOWED_OPS)
    if other:
        raise DataError(f"{path}: its graph uses {', '.join(o[:40] for o in other[:5])}, which the runtime does not "
                        "run: no classifier needs them, and they could allocate or loop without bound")


def _check_tensors(path: Path, msg: memoryview, fields: dict[int, bool], budget: Iterator[int]) -> None:
    """`_check_tensor` on the fields of `msg` that hold tensors (number -> whether sparse)."""
    for number, value in _fields(msg, budget):
        if number in fields:
            _check_tensor(path, value, fields[number], budget)


def _check_tensor(path: Path, tensor: memoryview, sparse: bool, budget: Iterator[int]) -> None:
    """Refuse a TensorProto whose data lives in another file (external_data = 13): onnxruntime would read any file
    the entry names, beyond the checked bytes and the memory cap. A sparse tensor's values (1) and indices (2)
    are tensors."""
    if sparse:
        _check_tensors(path, tensor, {1: False, 2: False}, budget)
    elif any(number == 13 for number, _ in _fields(tensor, budget)):
        raise DataError(f"{path}: its weights point at external files, which the runtime does not read "
                        "(`kmnist-fa export` keeps them inside the model)")


def _op(node: memoryview, budget: Iterator[int]) -> str:
    """A NodeProto's op type (field 4), prefixed by its domain (7) unless that is ai.onnx's."""
    strings = {number: bytes(v).decode("utf-8", "replace") for number, v in _fields(node, budget)  # the last wins
               if number in (4, 7)}
    op, domain = strings.get(4, ""), strings.get(7, "")
    return op if domain in ("", "ai.onnx") else f"{domain}:{op}"


def _fields(msg: memoryview, budget: Iterator[int]) -> Iterator[tuple[int, memoryview]]:
    """(number, value) of a protobuf message's length-delimited fields, the others skipped, each field taking one
    from `budget`; ValueError for bytes that are not a protobuf message or spend the budget."""
    i = 0
    while i < len(msg):
        if next(budget, None) is None:
            raise ValueError(f"over {MAX_FIELDS:,} protobuf fields")
        key, i = _varint(msg, i)
        kind = key & 7
        if kind == 0:
            _, i = _varint(msg, i)
        elif kind in (1, 5):
            i += 8 if kind == 1 else 4
        elif kind == 2:
            size, i = _varint(msg, i)
            if i + size <= len(msg):
                yield key >> 3, msg[i:i + size]
            i += size
        else:  # groups (3, 4) are not in ONNX's schema; 6 and 7 are not wire types
            raise ValueError(f"not protobuf: wire type {kind}")
        if i > len(msg):
            raise ValueError("not protobuf: truncated")


def _varint(msg: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while i < len(msg) and shift < 64:
        b = msg[i]
        value, i, shift = value | (b & 0x7F) << shift, i + 1, shift + 7
        if b < 0x80:
            return value, i
    raise ValueError("not protobuf: a bad varint")


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
