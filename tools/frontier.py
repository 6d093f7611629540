"""Inference speed of runs for the time-to-accuracy frontier (docs/experiments/time-to-accuracy.md) (img/s on the unlabelled images).

Each run predicts the dataset's unlabelled test images plain and with TTA, in this
process after one warm-up pass; the median of `--repeats` is reported. Training time
is measured separately, with the command a user types (docs/experiments/time-to-accuracy.md).

    python tools/frontier.py reference/lenet5 reference/alexnet5 reference/alexnet7 models/fast
"""
from __future__ import annotations

import argparse
import statistics
import time


def images_per_second(run, images, tta: bool, n: int, repeats: int) -> float:
    from kmnist_fa.infer.predict import predict_probs

    predict_probs(run, images[:256], tta=tta, n=n)  # warm-up: oneDNN picks its kernels on first use
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        predict_probs(run, images, tta=tta, n=n)
        times.append(time.perf_counter() - t)
    return len(images) / statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None, help="dataset folder (default: each run's own data)")
    ap.add_argument("--tta-n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    import torch

    from kmnist_fa.infer.predict import load_run, run_data

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.runs:
        run = load_run(name, cpu=True)
        images = run_data(run, args.data).test_x
        plain = images_per_second(run, images, False, 0, args.repeats)
        tta = images_per_second(run, images, True, args.tta_n, args.repeats)
        rows.append((name, run.record.config.arch, len(images), plain, tta))
        print(f"| {name} | {run.record.config.arch} | {plain:,.0f} | {tta:,.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
