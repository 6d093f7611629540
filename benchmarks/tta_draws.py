"""What per-image TTA draws cost: the toolkit's TTA against fastai's `Learner.tta` on the same run and images.

fastai draws a batch's augmentations together, so an image's TTA result depends on its
neighbours; `infer.predict.tta_parts` transforms each image of an augmented pass on its
own, from a seed of its own (docs/predicting.md). Both run here, interleaved, on the
shipped default run, reported as median (min-max) seconds and the ratio.

    python benchmarks/tta_draws.py                       # 4,000 KMNIST-10k test images, 4 passes, 5 repeats
    python benchmarks/tta_draws.py --images 300 --repeats 1
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from fastai.torch_core import no_random

from kmnist_fa.data.datasets import load_dataset
from kmnist_fa.data.pipeline import array_dl
from kmnist_fa.infer.predict import load_run, tta_parts
from kmnist_fa.runs.paths import reference_default

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/kmnist-10k"))
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--aug", default=None, help="augmentation preset TTA replays (default: the run's own, light)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ref = reference_default()
    tta = ref["tta"] if a.aug is None else dataclasses.replace(ref["tta"], aug=a.aug)
    run = load_run(ref["paths"][0], cpu=True, tta=tta)
    x = load_dataset(None, a.data).test_x[:a.images]

    def fastai_batch_draws():
        with no_random(42, reproducible=False):
            run.learn.tta(dl=array_dl(run.learn.dls, x), n=a.passes, beta=None)

    def per_image_draws():
        tta_parts(run, x, n=a.passes)

    times: dict[str, list[float]] = {"fastai tta (batch draws)": [], "kmnist-fa tta (per-image draws)": []}
    for _ in range(a.repeats):  # interleaved, so load changes hit both alike
        for name, fn in zip(times, (fastai_batch_draws, per_image_draws)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fastai tta (batch draws)"])
    print(f"{len(x):,} images, {a.passes} passes + clean, {run.record.arch}, aug {tta.aug or run.record.config.reg.aug}, "
          f"{a.threads} threads, {a.repeats} repeats")
    print(f"{'':34} {'median s':>9} {'min-max s':>13} {'ratio':>6}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:34} {m:9.2f} {min(ts):6.2f}-{max(ts):<6.2f} {m / base:6.2f}")


if __name__ == "__main__":
    main()
