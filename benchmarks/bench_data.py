"""Is the training DataLoader ever the bottleneck? One epoch of batches, per augmentation preset.

Times one epoch of `dls.train` (shuffle, batch, to-float, augment, normalise) for each
preset next to the floor: plain tensor indexing of the same uint8 array with the
same shuffling, float conversion and normalisation, no fastai. Repeats each
measurement and reports the median and spread, in one run, so ratios compare like
with like on the same machine state.

    python benchmarks/bench_data.py                       # kmnist-10k + Fashion-MNIST 60k
    python benchmarks/bench_data.py --smoke               # seconds; what CI runs
    python benchmarks/bench_data.py --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kmnist_fa.data import AUG_PRESETS, make_dls  # noqa: E402
from kmnist_fa.datasets import MnistData, load_dataset  # noqa: E402
from kmnist_fa.splits import SplitSpec  # noqa: E402

HERE = Path(__file__).resolve().parent
DEFAULT_SETS = {"kmnist-10k": HERE.parent.parent / "shared" / "data" / "kmnist-10k",
                "fashion-60k": Path("/usr/share/datasets/fashion-mnist")}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_fastai(dls, device) -> float:
    t = time.perf_counter()
    for xb, yb in dls.train:
        pass
    _sync(device)
    return time.perf_counter() - t


def time_plain(x_u8: torch.Tensor, y: torch.Tensor, bs: int, mean: float, std: float, device) -> float:
    """The hand-written floor: shuffle, index, move, float, normalise."""
    t = time.perf_counter()
    perm = torch.randperm(len(y))
    for i in range(0, len(y) - bs + 1, bs):
        idx = perm[i:i + bs]
        xb = x_u8[idx].to(device, non_blocking=True).float().div_(255).sub_(mean).div_(std)
        yb = y[idx].to(device, non_blocking=True)
    _sync(device)
    return time.perf_counter() - t


def bench(name: str, data: MnistData, device: str, repeats: int, bs: int, limit: int | None) -> list[dict]:
    if limit:
        data.train_x, data.train_y = data.train_x[:limit], data.train_y[:limit]
    rows = []
    split = SplitSpec(valid_pct=0.1, seed=0)
    base = make_dls(data, split, "none", bs, device)
    n = len(base.info.train_idx)
    x_u8 = torch.from_numpy(data.train_x[base.info.train_idx])[:, None]
    y = torch.from_numpy(data.train_y[base.info.train_idx])
    time_plain(x_u8, y, bs, base.info.mean, base.info.std, device)  # warm-up
    plain = [time_plain(x_u8, y, bs, base.info.mean, base.info.std, device) for _ in range(repeats)]
    rows.append(dict(dataset=name, pipeline="plain tensor indexing", n=n, times=plain))
    for preset in AUG_PRESETS:
        dls = make_dls(data, split, preset, bs, device)
        time_fastai(dls, device)  # warm-up
        rows.append(dict(dataset=name, pipeline=f"kmnist-fa aug={preset}", n=n,
                         times=[time_fastai(dls, device) for _ in range(repeats)]))
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| dataset | pipeline | images | epoch s (median) | spread (min-max) | images/s | vs plain |",
             "|---|---|---:|---:|---:|---:|---:|"]
    plain = {}
    for r in rows:
        med = statistics.median(r["times"])
        if r["pipeline"].startswith("plain"):
            plain[r["dataset"]] = med
        lines.append(f"| {r['dataset']} | {r['pipeline']} | {r['n']:,} | {med:.3f} | {min(r['times']):.3f}-"
                     f"{max(r['times']):.3f} | {r['n'] / med:,.0f} | {med / plain[r['dataset']]:.1f}x |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bs", type=int, default=64)
    ap.add_argument("--data", action="append", help="NAME=DIR of a dataset folder (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="2 repeats on 1,000 images of the first dataset")
    args = ap.parse_args(argv)
    sets = dict(d.split("=", 1) for d in args.data) if args.data else DEFAULT_SETS
    rows = []
    for name, folder in sets.items():
        if not Path(folder).exists():
            print(f"skipping {name}: {folder} not found", file=sys.stderr)
            continue
        rows += bench(name, load_dataset(data=folder), args.device, 2 if args.smoke else args.repeats, args.bs,
                      1000 if args.smoke else None)
        if args.smoke:
            break
    if not rows:
        sys.exit("no dataset found")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, bs {args.bs}")
    print(table(rows))


if __name__ == "__main__":
    main()
