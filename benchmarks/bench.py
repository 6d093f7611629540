"""Does fastai's convenience cost speed? kmnist-fa against a hand-written PyTorch loop, in one run.

Training: the same model, batch size, Adam, one-cycle schedule, label smoothing and the
same augmentation (random shift ±2 px + rotation ±15° as one affine resample, zero
padding) on the same uint8 tensors; only the training phase is timed, over a fixed
number of batches. Inference: the 4,000 unlabelled images, plain, with TTA and with
the default reference ensemble. Every measurement runs in a fresh process so its
peak RSS is its own; each is repeated and reported as median and spread.

    python benchmarks/bench.py                 # CPU, KMNIST-10k and Fashion-MNIST
    python benchmarks/bench.py --device cuda
    python benchmarks/bench.py --smoke         # seconds: what CI runs
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATASETS = {"kmnist-10k": ROOT.parent / "shared" / "data" / "kmnist-10k",
            "fashion-60k": Path("/usr/share/datasets/fashion-mnist")}
LR, BS, WARM = 2e-3, 64, 5  # WARM batches run before the clock starts (allocator, oneDNN/cuDNN set-up)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _subset(folder: str, n: int):
    from kmnist_fa.datasets import load_dataset

    d = load_dataset(data=folder)
    d.train_x, d.train_y = d.train_x[:n], d.train_y[:n]
    return d


def measure_toolkit(arch: str, folder: str, n_batches: int, device: str) -> dict:
    """Seconds for `n_batches` training batches through kmnist-fa's DataLoaders and Learner."""
    from fastai.callback.core import Callback

    from kmnist_fa.learner import TrainConfig, build_learner, prepare

    class Timer(Callback):
        def after_batch(self):
            if self.training and self.iter == WARM - 1:
                _sync(self.dls.device)
                self.t = time.perf_counter()

        def after_train(self):
            _sync(self.dls.device)
            self.learn.train_s = time.perf_counter() - self.t

    n_batches += WARM
    data = _subset(folder, n_batches * BS + 2 * BS)
    cfg = TrainConfig(arch=arch, epochs=1, lr=LR, bs=BS, aug="light", label_smoothing=0.1, valid_pct=2 * BS / len(
        data.train_y), cpu=device == "cpu")
    _, dls = prepare(cfg, data)
    learn = build_learner(dls, cfg, quiet=True)
    learn.add_cb(Timer())
    learn.fit_one_cycle(1, LR)
    return {"seconds": learn.train_s, "images": (len(dls.train) - WARM) * BS}


def measure_plain(arch: str, folder: str, n_batches: int, device: str) -> dict:
    """The loop one would write by hand: same model, data, augmentation, optimiser, schedule."""
    import torch
    import torch.nn.functional as F

    from kmnist_fa.data import image_stats
    from kmnist_fa.models import create_model

    torch.manual_seed(42)
    dev = torch.device(device)
    n_batches += WARM
    data = _subset(folder, n_batches * BS + 2 * BS)
    x = torch.from_numpy(data.train_x[: n_batches * BS])[:, None]
    y = torch.from_numpy(data.train_y[: n_batches * BS])
    mean, std = image_stats(data.train_x[: n_batches * BS])
    model = create_model(arch).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=n_batches)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    perm = torch.randperm(len(y))
    for i in range(n_batches):
        if i == WARM:
            _sync(dev)
            t = time.perf_counter()
        idx = perm[i * BS:(i + 1) * BS]
        xb = x[idx].to(dev).float().div_(255)
        yb = y[idx].to(dev)
        n = xb.shape[0]
        theta = (torch.rand(n, device=dev) * 2 - 1) * math.radians(15)
        shift = (torch.rand(n, 2, device=dev) * 2 - 1) * (2 * 2 / 28)
        mat = torch.stack([torch.stack([theta.cos(), -theta.sin(), shift[:, 0]], 1),
                           torch.stack([theta.sin(), theta.cos(), shift[:, 1]], 1)], 1)
        grid = F.affine_grid(mat, list(xb.shape), align_corners=True)
        xb = F.grid_sample(xb, grid, padding_mode="zeros", align_corners=True)
        xb = (xb - mean) / std
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    _sync(dev)
    return {"seconds": time.perf_counter() - t, "images": (n_batches - WARM) * BS}


def measure_infer(kind: str, folder: str, device: str, n: int | None) -> dict:
    """Predicting the unlabelled test images: plain, TTA (n=4), the default reference ensemble."""
    from kmnist_fa.datasets import load_dataset
    from kmnist_fa.ensemble import combine, member_probs
    from kmnist_fa.inference import load_run
    from kmnist_fa.runs import reference_default

    x = load_dataset(data=folder).test_x[:n]
    ref = reference_default()
    if kind == "infer-ensemble":
        members = [load_run(p, cpu=device == "cpu", tta_aug=ref.get("tta_aug")) for p in ref["paths"]]
    else:
        members = [load_run(ROOT / "models" / "reference" / "alexnet5", cpu=device == "cpu")]
    t = time.perf_counter()
    if kind == "infer-ensemble":
        combine(member_probs(members, x, ref["tta"], ref["tta_n"]), ref["method"])
    else:
        member_probs(members, x, kind == "infer-tta", 4)
    return {"seconds": time.perf_counter() - t, "images": len(x)}


def one(args) -> None:
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    if args.kind in ("toolkit", "plain"):
        res = (measure_toolkit if args.kind == "toolkit" else measure_plain)(args.arch, args.folder, args.batches,
                                                                            args.device)
    else:
        res = measure_infer(args.kind, args.folder, args.device, args.limit)
    print(json.dumps({**res, "rss_mb": _rss_mb()}))


def run_one(*argv) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *map(str, argv)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measurement {argv} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stats(samples: list[dict]) -> dict:
    ips = [s["images"] / s["seconds"] for s in samples]
    return {"ips": statistics.median(ips), "lo": min(ips), "hi": max(ips),
            "rss": statistics.median(s["rss_mb"] for s in samples)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("kind", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("arch", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("folder", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--batches", type=int, default=40, help="training batches per measurement")
    ap.add_argument("--limit", type=int, default=None, help="test images for inference (default all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="lenet5,alexnet5,alexnet7")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="which of " + ", ".join(DATASETS))
    ap.add_argument("--kmnist", type=Path, default=DATASETS["kmnist-10k"], help="folder of the KMNIST-10k sample")
    ap.add_argument("--smoke", action="store_true", help="lenet5, 5 batches, 1 repeat, 200 test images")
    args = ap.parse_args(argv)
    if args.one:
        return one(args)
    if args.smoke:
        args.archs, args.batches, args.repeats, args.limit = "lenet5", 5, 1, 200
    DATASETS["kmnist-10k"] = args.kmnist
    sets = {k: v for k, v in DATASETS.items() if v.exists() and k in args.datasets.split(",")}
    if args.smoke:
        sets = dict(list(sets.items())[:1])
    print(f"device {args.device}, {args.threads} threads, batch {BS}, {args.batches} batches a measurement, "
          f"{args.repeats} repeats (median, min-max)\n")
    print("| dataset | arch | kmnist-fa img/s | plain img/s | ratio (time) | kmnist-fa RSS MB | plain RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    common = ["--batches", args.batches, "--threads", args.threads, "--device", args.device]
    for name, folder in sets.items():
        for arch in args.archs.split(","):
            tk, pl = [], []
            for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
                tk.append(run_one("toolkit", arch, folder, *common))
                pl.append(run_one("plain", arch, folder, *common))
            a, b = stats(tk), stats(pl)
            print(f"| {name} | {arch} | {a['ips']:,.0f} ({a['lo']:,.0f}-{a['hi']:,.0f}) | {b['ips']:,.0f} "
                  f"({b['lo']:,.0f}-{b['hi']:,.0f}) | {b['ips'] / a['ips']:.2f} | {a['rss']:.0f} | {b['rss']:.0f} |",
                  flush=True)
    print("\n| inference on the unlabelled test images | img/s | RSS MB |\n|---|---:|---:|")
    for kind, label in (("infer-plain", "alexnet5 plain"), ("infer-tta", "alexnet5 TTA n=4"),
                        ("infer-ensemble", "default reference (predict with no --model)")):
        s = stats([run_one(kind, "-", args.kmnist, *common, *(["--limit", args.limit] if args.limit else []))
                   for _ in range(args.repeats)])
        print(f"| {label} | {s['ips']:,.0f} ({s['lo']:,.0f}-{s['hi']:,.0f}) | {s['rss']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
