"""Does fastai's convenience cost speed? kmnist-fa against hand-written PyTorch, in one run.

Four tables, every number from a fresh process (so its peak RSS is its own), each
measurement repeated with toolkit and hand-written runs interleaved, reported as
median (min-max):

1. training: kmnist-fa's DataLoaders + `Learner` against the loop one would write by
   hand with the same model, batch size, Adam, one-cycle schedule, label smoothing and
   augmentation (shift ±2 px + rotation ±15° as one affine resample, zero padding) on
   the same uint8 tensors; only the training phase is timed, over a fixed number of
   batches after a warm-up;
2. the data pipeline alone: whole epochs of training batches per augmentation preset,
   against the same steps by hand (heavy has no hand-written twin);
3. inference on the unlabelled test images: a plain torch forward pass, the toolkit
   without and with TTA, and the default reference model;
4. export (with the `export` extra): the ONNX model through the torch-free
   `kmnist_fa.infer.runtime` against the plain torch forward pass, at batch 256 and batch 1,
   and the installed size of each stack's packages;
5. peak RSS, in every table.

    python benchmarks/bench.py                 # CPU, KMNIST-10k and Fashion-MNIST
    python benchmarks/bench.py --device cuda
    python benchmarks/bench.py --smoke         # seconds: what CI runs
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"kmnist-10k": ROOT.parent / "shared" / "data" / "kmnist-10k",
            "fashion-60k": Path("/usr/share/datasets/fashion-mnist")}
LR, BS, WARM = 2e-3, 64, 5  # WARM batches run before the clock starts (allocator, oneDNN/cuDNN set-up)
INFER_ARCH, TTA_N = "alexnet5", 4


def _rss_mb() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the process image, while ru_maxrss carries the
    peak of the parent it was forked from across exec (so a child of a process holding torch never
    reads below that)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _subset(folder: str, n: int | None):
    from kmnist_fa.data.datasets import load_dataset

    d = load_dataset(data=folder)
    d.epoch_images = round(len(d.train_y) * 0.9)  # a training epoch on the default 10% holdout split
    d.train_x, d.train_y = d.train_x[:n], d.train_y[:n]
    return d


class Clock:
    """Seconds and images from batch WARM on; the first batches pay one-off set-up."""

    def __init__(self, device):
        self.device, self.batches, self.images, self.t0 = device, 0, 0, None

    def tick(self, n_images: int):
        self.batches += 1
        if self.batches == WARM:
            _sync(self.device)
            self.t0 = time.perf_counter()
        elif self.batches > WARM:
            self.images += n_images

    def result(self) -> dict:
        _sync(self.device)
        return {"seconds": time.perf_counter() - self.t0, "images": self.images}


def plain_light_aug(xb):
    """The light preset written by hand: one random shift + rotation resample per image."""
    import torch
    import torch.nn.functional as F

    n, dev = xb.shape[0], xb.device
    theta = (torch.rand(n, device=dev) * 2 - 1) * math.radians(15)
    shift = (torch.rand(n, 2, device=dev) * 2 - 1) * (2 * 2 / 28)
    mat = torch.stack([torch.stack([theta.cos(), -theta.sin(), shift[:, 0]], 1),
                       torch.stack([theta.sin(), theta.cos(), shift[:, 1]], 1)], 1)
    grid = F.affine_grid(mat, list(xb.shape), align_corners=True)
    return F.grid_sample(xb, grid, padding_mode="zeros", align_corners=True)


# --------------------------------------------------------------------------- 1. training

def train_toolkit(arch: str, folder: str, n_batches: int, device: str, aug: str = "light", off: str = "") -> dict:
    """`n_batches` training batches through kmnist-fa's DataLoaders and Learner; `off` switches patches of
    private fastai/torch behaviour (see `kmnist_fa.core.speedups`) back to stock fastai: `dispatch`, `untyped`."""
    import contextlib

    from fastai.callback.core import Callback

    from kmnist_fa.core import speedups
    from kmnist_fa.data import pipeline as kdata

    if "dispatch" in off.split(","):  # every callback sees every event, as in fastai's Learner
        speedups.PER_BATCH_EVENTS = ()
    if "untyped" in off.split(","):  # batch transforms with tensor-subclass dispatch on
        kdata.no_subclass_dispatch = contextlib.nullcontext

    from kmnist_fa.config.options import TrainConfig
    from kmnist_fa.pipelines.training import prepare
    from kmnist_fa.train.learner import build_learner

    clock = Clock(device)

    class Timer(Callback):
        def after_batch(self):
            if self.training:
                clock.tick(len(self.yb[0]))

        def after_train(self):  # before validation
            self.res = clock.result()

    n_batches += WARM
    data = _subset(folder, n_batches * BS + 2 * BS)
    cfg = TrainConfig.build(arch=arch, epochs=1, lr=LR, bs=BS, aug=aug, label_smoothing=0.1,
                      valid_pct=2 * BS / len(data.train_y), cpu=device == "cpu")
    _, dls = prepare(cfg, data)
    learn = build_learner(dls, cfg, quiet=True)
    timer = Timer()
    learn.add_cb(timer)
    learn.fit_one_cycle(1, LR)
    return {**timer.res, "epoch_images": data.epoch_images}


def train_plain(arch: str, folder: str, n_batches: int, device: str) -> dict:
    """The loop one would write by hand: same model, data, augmentation, optimiser, schedule."""
    import torch

    from kmnist_fa.data.pipeline import image_stats
    from kmnist_fa.models.registry import create_model

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
    clock = Clock(dev)
    for i in range(n_batches):
        idx = perm[i * BS:(i + 1) * BS]
        xb = (plain_light_aug(x[idx].to(dev).float().div_(255)) - mean) / std
        loss = loss_fn(model(xb), y[idx].to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        clock.tick(len(idx))
    return {**clock.result(), "epoch_images": data.epoch_images}


# --------------------------------------------------------------------------- 2. data pipeline

def data_toolkit(preset: str, folder: str, limit: int | None, n_batches: int, device: str) -> dict:
    """Whole epochs of `dls.train` (shuffle, batch, to-float, augment, normalise), >= `n_batches`."""
    from kmnist_fa.data.pipeline import make_dls
    from kmnist_fa.data.splits import SplitSpec

    dls = make_dls(_subset(folder, limit), SplitSpec(valid_pct=0.1, seed=0), preset, BS, device)
    clock = Clock(device)
    while clock.batches < n_batches + WARM:
        for xb, _ in dls.train:
            clock.tick(len(xb))
    return clock.result()


def data_plain(preset: str, folder: str, limit: int | None, n_batches: int, device: str) -> dict:
    """The same epoch by hand: shuffle, index, move, float, (augment,) normalise."""
    import torch

    from kmnist_fa.data.pipeline import image_stats
    from kmnist_fa.data.splits import SplitSpec, split_indices

    if preset not in ("none", "light"):
        raise SystemExit(f"no hand-written pipeline for aug={preset}")
    data = _subset(folder, limit)
    train_idx, _ = split_indices(data.train_y, SplitSpec(valid_pct=0.1, seed=0))
    mean, std = image_stats(data.train_x[train_idx])
    x = torch.from_numpy(data.train_x[train_idx])[:, None]
    y = torch.from_numpy(data.train_y[train_idx])
    clock = Clock(device)
    while clock.batches < n_batches + WARM:
        perm = torch.randperm(len(y))
        for i in range(0, len(y) - BS + 1, BS):
            idx = perm[i:i + BS]
            xb = x[idx].to(device).float().div_(255)
            xb = (plain_light_aug(xb) if preset == "light" else xb).sub_(mean).div_(std)
            y[idx].to(device)
            clock.tick(len(idx))
    return clock.result()


# --------------------------------------------------------------------------- 3. inference

def infer_toolkit(kind: str, folder: str, limit: int | None, device: str) -> dict:
    """The toolkit's predict path: a reference run loaded from disk, plain or TTA, or the default."""
    from kmnist_fa.data.datasets import load_dataset
    from kmnist_fa.infer.ensemble import combine, member_probs
    from kmnist_fa.infer.predict import load_run
    from kmnist_fa.runs.paths import reference_default, reference_dir

    x = load_dataset(data=folder).test_x[:limit]
    cpu = device == "cpu"
    if kind == "default":
        ref = reference_default()
        members = [load_run(p, cpu=cpu, tta=ref["tta"]) for p in ref["paths"]]
        tta, n = ref["tta"].on, ref["tta"].n
    else:
        members, tta, n = [load_run(reference_dir() / INFER_ARCH, cpu=cpu)], kind == "tta", TTA_N
    member_probs(members, x[:WARM], tta, n)  # warm-up
    _sync(device)
    t = time.perf_counter()
    probs = member_probs(members, x, tta, n)
    if kind == "default":
        combine(probs, ref["method"])
    _sync(device)
    return {"seconds": time.perf_counter() - t, "images": len(x)}


def infer_plain(kind: str, folder: str, limit: int | None, device: str) -> dict:
    """The hand-written floor: the same weights, normalise, forward in batches of 256, softmax."""
    import torch

    from kmnist_fa.data.datasets import load_dataset
    from kmnist_fa.models.registry import create_model
    from kmnist_fa.runs.paths import reference_dir
    from kmnist_fa.runs.record import RunRecord

    path = reference_dir() / INFER_ARCH
    rec = RunRecord.read(path)
    bs = 1 if kind == "batch1" else 256
    model = create_model(rec.arch, len(rec.classes)).to(device).eval()
    model.load_state_dict(torch.load(path / "model.pth", weights_only=True, map_location=device))
    x = torch.from_numpy(load_dataset(data=folder).test_x[:limit])[:, None]
    mean, std = rec.norm.mean, rec.norm.std

    def forward(imgs):
        with torch.inference_mode():
            return [model((b.to(device).float().div_(255) - mean) / std).softmax(1).cpu() for b in imgs.split(bs)]

    forward(x[:WARM])
    _sync(device)
    t = time.perf_counter()
    torch.cat(forward(x))
    return {"seconds": time.perf_counter() - t, "images": len(x)}


def onnx_file() -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"kmnist-fa-bench-{INFER_ARCH}.onnx"


def infer_onnx(kind: str, folder: str, limit: int | None, device: str) -> dict:
    """The exported ONNX model through kmnist_fa.infer.runtime (onnxruntime, CPU), in a process without torch."""
    from kmnist_fa.data.datasets import load_dataset
    from kmnist_fa.infer.runtime import OnnxClassifier

    clf, bs = OnnxClassifier(onnx_file()), 1 if kind == "batch1" else 256
    x = load_dataset(data=folder).test_x[:limit]
    clf.predict_probs(x[:WARM], bs)
    t = time.perf_counter()
    clf.predict_probs(x, bs)
    return {"seconds": time.perf_counter() - t, "images": len(x)}


def installed_mb(roots: list[str]) -> tuple[float, list[str]]:
    """MB on disk of these distributions and everything they require, as installed here."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen, todo, total = set(), list(roots), 0
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        total += sum(p.locate().stat().st_size for p in dist.files or [] if p.locate().exists())
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return total / 2**20, sorted(seen)


MEASURES = {"train": train_toolkit, "train-plain": train_plain, "data": data_toolkit, "data-plain": data_plain,
            "infer": infer_toolkit, "infer-plain": infer_plain, "onnx": infer_onnx}


def measure(args) -> dict:
    """One measurement, in a process of its own (see `run_one`): its result and the process's peak RSS."""
    warnings.filterwarnings("ignore")
    if args.kind == "onnx":  # the deployment being measured has no torch: neither does this process
        sys.modules["torch"] = None
    else:
        import torch

        torch.set_num_threads(args.threads)
    f = MEASURES[args.kind]
    if args.kind == "train":
        res = f(args.what, args.folder, args.batches, args.device, args.aug, args.off)
    elif args.kind.startswith("train"):
        res = f(args.what, args.folder, args.batches, args.device)
    elif args.kind.startswith("data"):
        res = f(args.what, args.folder, args.limit, args.data_batches, args.device)
    else:
        res = f(args.what, args.folder, args.limit, args.device)
    return {**res, "rss_mb": _rss_mb()}


# --smoke: measurements (but the torch-free ONNX ones) fork from a server that imported torch and the toolkit
# once, instead of paying ~5 s of imports each; a smoke run's numbers are not measurements anyway
SMOKE_SERVER = None


def _forked_measure(argv: list[str], conn) -> None:
    conn.send(measure(parser().parse_args(["--one", *argv])))


def run_one(*argv) -> dict:
    argv = [str(a) for a in argv]
    if SMOKE_SERVER is not None and argv[0] != "onnx":
        recv, send = SMOKE_SERVER.Pipe(duplex=False)
        proc = SMOKE_SERVER.Process(target=_forked_measure, args=(argv, send))
        proc.start()
        proc.join()
        if proc.exitcode == 0 and recv.poll():
            return recv.recv()
        raise SystemExit(f"measurement {argv} failed (exit code {proc.exitcode})")
    out = subprocess.run([sys.executable, __file__, "--one", *argv], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"measurement {argv} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stats(samples: list[dict]) -> dict:
    ips = [s["images"] / s["seconds"] for s in samples]
    return {"ips": statistics.median(ips), "lo": min(ips), "hi": max(ips),
            "rss": statistics.median(s["rss_mb"] for s in samples), "epoch_images": samples[0].get("epoch_images")}


def _cell(s: dict | None) -> str:
    return "-" if s is None else f"{s['ips']:,.0f} ({s['lo']:,.0f}-{s['hi']:,.0f})"


CONCURRENT = False  # --smoke: a pair's two processes run side by side; its numbers are not measurements anyway


def paired(repeats: int, toolkit: tuple, plain: tuple | None) -> tuple[dict, dict | None]:
    """Toolkit and hand-written measurements interleaved, so drift in machine load hits both alike."""
    tk, pl = [], []
    for _ in range(repeats):
        if CONCURRENT and plain:
            with ThreadPoolExecutor(2) as ex:
                a, b = ex.submit(run_one, *toolkit), ex.submit(run_one, *plain)
                tk.append(a.result())
                pl.append(b.result())
            continue
        tk.append(run_one(*toolkit))
        if plain:
            pl.append(run_one(*plain))
    return stats(tk), stats(pl) if plain else None


def row(label: str, a: dict, b: dict | None) -> str:
    ratio = "-" if b is None else f"{b['ips'] / a['ips']:.2f}"
    rss = "-" if b is None else f"{b['rss']:.0f}"
    epoch = f" {a['epoch_images'] / a['ips']:.2f} / {b['epoch_images'] / b['ips']:.2f} |" if a["epoch_images"] else ""
    return f"| {label} | {_cell(a)} | {_cell(b)} | {ratio} |{epoch} {a['rss']:.0f} | {rss} |"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("kind", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("what", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("folder", nargs="?", help=argparse.SUPPRESS)
    ap.add_argument("--aug", default="light", help=argparse.SUPPRESS)
    ap.add_argument("--off", default="", help=argparse.SUPPRESS)
    ap.add_argument("--patches", default="dispatch,untyped", help="patches to switch off, one at a time, in "
                    "the patches table")
    ap.add_argument("--batches", type=int, default=40, help="training batches per measurement (after warm-up)")
    ap.add_argument("--data-batches", type=int, default=400,
                    help="data pipeline: at least this many timed batches (whole epochs) per measurement")
    ap.add_argument("--limit", type=int, default=None,
                    help="images for the data and inference tables (default: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads in every measurement")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--archs", default="lenet5,alexnet5,alexnet7")
    ap.add_argument("--datasets", default=",".join(DATASETS), help="which of " + ", ".join(DATASETS))
    ap.add_argument("--kmnist", type=Path, default=DATASETS["kmnist-10k"], help="folder of the KMNIST-10k sample")
    ap.add_argument("--fashion", type=Path, default=DATASETS["fashion-60k"], help="folder of Fashion-MNIST")
    ap.add_argument("--tables", default="train,data,infer,export,patches", help="which tables to run (export needs the "
                    "export extra)")
    ap.add_argument("--smoke", action="store_true",
                    help="seconds, what CI runs: one dataset, lenet5, 5/20 batches, 1 repeat, 128 images, the two "
                    "processes of a pair side by side, forked from one that imported torch and the toolkit once")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    if args.one:
        print(json.dumps(measure(args)))
        return
    if args.smoke:
        global CONCURRENT, SMOKE_SERVER
        args.archs, args.batches, args.data_batches, args.repeats, args.limit = "lenet5", 5, 20, 1, 128
        CONCURRENT = True
        SMOKE_SERVER = multiprocessing.get_context("forkserver")
        SMOKE_SERVER.set_forkserver_preload(["torch", "kmnist_fa.pipelines.training", "kmnist_fa.infer.predict"])
    DATASETS["kmnist-10k"], DATASETS["fashion-60k"] = args.kmnist, args.fashion
    sets = {k: v for k, v in DATASETS.items() if v.exists() and k in args.datasets.split(",")}
    if args.smoke:
        sets = dict(list(sets.items())[:1])
    if not sets:
        raise SystemExit(f"--datasets: none of {args.datasets} found")
    import torch

    try:
        dev = torch.device(args.device)
    except RuntimeError:
        raise SystemExit(f"--device {args.device}: not a torch device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch sees no CUDA device on this machine")
    tables = args.tables.split(",")
    common = ["--threads", args.threads, "--device", args.device, *(["--limit", args.limit] if args.limit else [])]
    data_common = [*common, "--data-batches", args.data_batches]
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads, batch {BS}, "
          f"{args.repeats} repeats: median (min-max) images/s\n")
    header = "| kmnist-fa img/s | plain img/s | time ratio | kmnist-fa RSS MB | plain RSS MB |\n" \
             "|---|---:|---:|---:|---:|---:|"
    if "train" in tables:
        print(f"Training, {args.batches} batches after {WARM} warm-up; s/epoch = a 90% training split at "
              f"that speed\n\n| dataset / arch | kmnist-fa img/s | plain img/s | time ratio | s/epoch kmnist-fa / plain "
              "| kmnist-fa RSS MB | plain RSS MB |\n|---|---:|---:|---:|---:|---:|---:|")
        for name, folder in sets.items():
            for arch in args.archs.split(","):
                a, b = paired(args.repeats, ("train", arch, folder, "--batches", args.batches, *common),
                              ("train-plain", arch, folder, "--batches", args.batches, *common))
                print(row(f"{name} / {arch}", a, b), flush=True)
    if "patches" in tables:
        print(f"\nPrivate-API patches (kmnist_fa/core/speedups.py), each switched back to stock fastai, training each "
              f"default recipe's architecture with its `heavy` preset ({args.batches} batches)\n\n"
              "| dataset / arch | all patches img/s | patch off | patch off img/s | time with patch / without |"
              "\n|---|---:|---|---:|---:|")
        for name, folder in list(sets.items())[:1]:
            for arch in args.archs.split(","):
                base = ("train", arch, folder, "--batches", args.batches, "--aug", "heavy", *common)
                for off in args.patches.split(","):
                    a, b = paired(args.repeats, base, (*base, "--off", off))
                    print(f"| {name} / {arch} | {_cell(a)} | {off} | {_cell(b)} | {b['ips'] / a['ips']:.2f} |",
                          flush=True)
    if "data" in tables:
        print(f"\nData pipeline: training batches (90% split), whole epochs, at least {args.data_batches} batches\n\n"
              f"| dataset / aug {header}")
        for name, folder in sets.items():
            for preset in ("none", "light", "heavy"):
                a, b = paired(args.repeats, ("data", preset, folder, *data_common),
                              None if preset == "heavy" else ("data-plain", preset, folder, *data_common))
                print(row(f"{name} / {preset}", a, b), flush=True)
    if "infer" in tables:
        print(f"\nInference on the unlabelled KMNIST test images\n\n| model {header}")
        a, b = paired(args.repeats, ("infer", "plain", args.kmnist, *common),
                      ("infer-plain", "plain", args.kmnist, *common))
        print(row(f"{INFER_ARCH}", a, b), flush=True)
        a, _ = paired(args.repeats, ("infer", "tta", args.kmnist, *common), None)
        print(row(f"{INFER_ARCH} TTA n={TTA_N}", a, None), flush=True)
        a, _ = paired(args.repeats, ("infer", "default", args.kmnist, *common), None)
        print(row("default reference (predict with no --model)", a, None), flush=True)
    if "export" in tables:
        # exported in its own process: a child's peak RSS starts from its parent's, and exporting is large
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from kmnist_fa.infer.export import export; from kmnist_fa.infer.predict import load_run; "
                        "from kmnist_fa.runs import reference_dir; "
                        "export([load_run(reference_dir() / sys.argv[2], cpu=True)], sys.argv[3])",
                        str(ROOT), INFER_ARCH, str(onnx_file())], check=True, capture_output=True)
        print(f"\nExport: {INFER_ARCH} as ONNX through kmnist_fa.infer.runtime (onnxruntime, CPU) against the plain "
              f"torch forward pass\n\n| model / batch | onnxruntime img/s | plain img/s | time ratio | "
              "onnxruntime RSS MB | plain RSS MB |\n|---|---:|---:|---:|---:|---:|")
        for kind, small in (("batch256", args.limit), ("batch1", min(args.limit or 500, 500))):
            lim = ["--limit", small] if small else []
            a, b = paired(args.repeats, ("onnx", kind, args.kmnist, *common[:4], *lim),
                          ("infer-plain", kind, args.kmnist, *common[:4], *lim))
            print(row(f"{INFER_ARCH} / {kind.replace('batch', 'batch ')}", a, b), flush=True)
        lim = ["--limit", args.limit] if args.limit else []
        a, b = paired(args.repeats, ("onnx", "batch256", args.kmnist, *common[:4], *lim),
                      ("infer", "plain", args.kmnist, *common[:4], *lim))
        print(row(f"{INFER_ARCH} / batch 256, against kmnist-fa predict", a, b), flush=True)
        ort_mb, ort_pkgs = installed_mb(["onnxruntime", "numpy", "pillow"])
        torch_mb, torch_pkgs = installed_mb(["torch", "fastai"])
        print(f"\nInstalled size: the runtime's stack (onnxruntime, numpy, Pillow and what they require: "
              f"{len(ort_pkgs)} packages) {ort_mb:,.0f} MB; torch + fastai and what they require "
              f"({len(torch_pkgs)} packages) {torch_mb:,.0f} MB")


if __name__ == "__main__":
    main()
