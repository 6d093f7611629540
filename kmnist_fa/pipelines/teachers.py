"""Teacher runs, resolved for a student: self-training's pseudo-labels (`--pseudo TEACHER...`) and
distillation's soft-target models (`--teacher TEACHER...`).

Both load teachers the same way (`resolve_teachers`) and refuse the same ones
(`check_teacher`); distillation's callback (`train.distill.Distill`) is handed the
loaded models.

Self-training on a dataset's unlabelled test images (or on `--unlabelled` images):

Teacher runs predict those images with TTA (fastai's n=4 and clean-pass weight 0.25,
whatever the teachers predict with by default; seeded, so a resumed run rebuilds the
same pseudo-labels); the images whose mean teacher probability reaches
`--pseudo-threshold` join the training split with the teachers' class as a hard label.
Validation images never do, and the normalisation statistics stay those of the
labelled training split.

Teachers trained with label smoothing ε were taught to give the true class 1 - ε + ε/C
(0.91 for ε = 0.1 and 10 classes), so a threshold above that admits few images; the
run says so (`confidence_target` in run.json's `pseudo` block).

Honest validation needs teachers that never saw this run's validation images: a run
with a validation split only takes teachers trained on the same labelled data and the
same split (`--pseudo a7-f{fold}` names one teacher per fold of a k-fold study). A
`--full` run may take any teacher trained on the same labelled data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .. import runs
from ..config.options import TTA_N, TrainConfig, TtaSettings
from ..core.errors import DataError, OptionError, RunError
from ..data.datasets import MnistData
from ..data.images import collect_inputs
from ..data.splits import split_indices
from ..infer.ensemble import combine
from ..infer.predict import LoadedRun, load_run, predict_probs
from ..train.distill import Teacher, weights_digest

PSEUDO, DISTILL = "--pseudo", "--teacher"


def teacher_names(spec: str, fold: int | None, flag: str = PSEUDO) -> list[str]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise OptionError(f"{flag}: no teacher runs given")
    if any("{fold}" in n for n in names) and fold is None:
        raise OptionError(f"{flag}: {{fold}} needs a k-fold run (--n-folds K --fold I)")
    return [n.replace("{fold}", str(fold)) for n in names]


def check_teacher(name: str, teacher: runs.RunRecord, cfg: TrainConfig, data: MnistData,
                  flag: str = PSEUDO) -> None:
    """Refuse a teacher that saw this run's validation images, or other labelled data."""
    if teacher.data.fingerprint != data.fingerprint:
        raise RunError(f"{flag} {name}: trained on other labelled data ({teacher.data.name}); a teacher must be "
                       "trained on this run's data")
    if teacher.classes != list(data.classes):
        raise RunError(f"{flag} {name}: its classes differ from this dataset's")
    s, t = cfg.split, teacher.config.split
    if not s.full and (t.full, t.n_folds, t.fold, t.valid_pct, t.seed) != (s.full, s.n_folds, s.fold, s.valid_pct,
                                                                            s.seed):
        raise RunError(f"{flag} {name}: trained on another split ({t.describe()}), so it saw images this run "
                       f"validates on ({s.describe()}); use a teacher trained on the same split")


def resolve_teachers(spec: str, cfg: TrainConfig, data: MnistData, root: str | Path | None, flag: str,
                     device=None) -> list[tuple[str, LoadedRun]]:
    """(name, loaded run) of each teacher in `spec`, every one checked against this run's data and split."""
    out = []
    for n in teacher_names(spec, cfg.split.fold, flag):
        try:
            path = runs.run_path(n, root)
        except RunError as e:
            raise RunError(f"{flag} {e}") from None
        run = load_run(path, device=device, cpu=cfg.cpu, tta=TtaSettings())  # pseudo-labels' TTA, not its own
        check_teacher(n, run.record, cfg, data, flag)
        out.append((n, run))
    return out


def load_teachers(cfg: TrainConfig, data: MnistData, root: str | Path | None, device) -> list[Teacher]:
    """Distillation's teachers as frozen models on `device`, each with its own normalisation."""
    out = []
    for n, run in resolve_teachers(cfg.reg.teacher, cfg, data, root, DISTILL, device):
        model = run.learn.model.to(device).eval()
        model.requires_grad_(False)
        out.append(Teacher(n, model, run.record.norm.mean, run.record.norm.std, weights_digest(model)))
    return out


def pseudo_labels(cfg: TrainConfig, data: MnistData, root: str | Path | None = None
                  ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images, labels, what run.json records) for the confident pseudo-labels of the test images.

    Every teacher is loaded and checked before any predicts, so a refused teacher costs no prediction time."""
    images, source = unlabelled_images(cfg, data)
    teachers = resolve_teachers(cfg.data.pseudo, cfg, data, root, PSEUDO)
    names = [n for n, _ in teachers]
    probs, caps = [], []
    for _, run in teachers:
        ls = run.record.config.reg.label_smoothing  # its training target for the true class: 1 - ls + ls / C
        caps.append(1 - ls + ls / len(data.classes))
        probs.append(predict_probs(run, images, tta=True, n=TTA_N).cpu())
    conf, label = combine(probs, "mean").max(1)
    keep = (conf >= cfg.data.pseudo_threshold).numpy()
    info = {"teachers": names, "threshold": cfg.data.pseudo_threshold, "targets": "hard", "tta_n": TTA_N,
            "images": int(keep.sum()), "of": len(images), "confidence_target": round(min(caps), 4),
            "per_class": np.bincount(label.numpy()[keep], minlength=data.c).tolist(), **source}
    return images[keep], label.numpy()[keep].astype(np.int64), info


def unlabelled_images(cfg: TrainConfig, data: MnistData) -> tuple[np.ndarray, dict]:
    """The images self-training labels, and what run.json records of where they came from: `--unlabelled`'s
    images (their MD5, so a resumed run can tell they changed), else the dataset's test images."""
    if cfg.data.unlabelled is None:
        if data.test_x is None or not len(data.test_x):
            raise DataError(f"--pseudo: {data.name} has no unlabelled test images to label; name some with "
                            "--unlabelled PATH")
        return data.test_x, {}
    got = collect_inputs([cfg.data.unlabelled])
    if got.errors:
        raise DataError(f"--unlabelled: {got.errors[0]}")
    if not len(got.images):
        raise DataError(f"--unlabelled {cfg.data.unlabelled}: no images found")
    images = np.ascontiguousarray(got.images, dtype=np.uint8)
    if not cfg.split.full:  # labelled with the teachers' class, a validation image would be trained on
        _, valid = split_indices(data.train_y, cfg.split)
        seen = {x.tobytes() for x in data.train_x[valid]}
        clash = sum(x.tobytes() in seen for x in images)
        if clash:
            raise DataError(f"--unlabelled {cfg.data.unlabelled}: {clash:,} of its images are this run's validation "
                            "images, which would then be trained on; name images outside the labelled data")
    return images, {"unlabelled": cfg.data.unlabelled, "unlabelled_md5": hashlib.md5(images.tobytes()).hexdigest()}
