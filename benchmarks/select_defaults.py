"""Choose each architecture's default recipe and the reference ensemble by cross-validation.

Everything is decided on the labelled images only (the test images are never read):

1. every candidate recipe is trained on each of K stratified folds; its validation
   fold is predicted plain and with fastai TTA;
2. the report's recipes are trained on fold 0 (a fixed holdout, comparable with the
   candidates' fold 0);
3. per architecture the candidate with the best mean TTA accuracy becomes
   `default-<arch>`; ensembles of those defaults are scored fold by fold;
4. every candidate of a shippable architecture is also trained on all labelled
   images (`--full`) in the same pool, so the chosen ones can ship without a second pass.

Trainings run in parallel processes (one thread each): on a GPU these small
models are bound by Python overhead, so many at once fill the card.

    python benchmarks/select_defaults.py --data ../shared/data/kmnist-10k --out cv-out --jobs 14
    python benchmarks/select_defaults.py --data ../shared/data/kmnist-10k --out /tmp/cv --smoke
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tarfile
import time
from concurrent.futures import CancelledError, ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHIPPABLE = ("lenet5", "alexnet5", "alexnet7")
COMMON = dict(opt="adam", schedule="one-cycle", bs=64, label_smoothing=0.1)
CANDIDATES = {
    "lenet5-light-40": dict(arch="lenet5", lr=3e-3, epochs=40, aug="light"),
    "lenet5-heavy-60": dict(arch="lenet5", lr=3e-3, epochs=60, aug="heavy"),
    "alexnet5-light-30": dict(arch="alexnet5", lr=2e-3, epochs=30, aug="light"),
    "alexnet5-heavy-40": dict(arch="alexnet5", lr=2e-3, epochs=40, aug="heavy"),
    "alexnet7-light-30": dict(arch="alexnet7", lr=1e-3, epochs=30, aug="light"),
    "alexnet7-heavy-40": dict(arch="alexnet7", lr=1e-3, epochs=40, aug="heavy"),
    "alexnet7bn-heavy-40": dict(arch="alexnet7", lr=2e-3, epochs=40, aug="heavy", bn=True),
    "xresnet18-heavy-30": dict(arch="xresnet18", lr=3e-3, epochs=30, aug="heavy"),
}
REPORT = ("report-lenet5", "report-lenet5-aug", "report-alexnet5-aug", "report-alexnet5-bn",
          "report-alexnet7-adam", "report-alexnet7-sgd")
TTA_N = 8


def job(kind: str, name: str, cfg: dict, data: str, root: str, n_folds: int, fold: int | None, smoke: bool) -> dict:
    """One training (+ validation predictions) in its own process."""
    import warnings

    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from kmnist_fa.inference import load_run, predict_probs, run_data, validation_set
    from kmnist_fa.config import TrainConfig
    from kmnist_fa.learner import train
    from kmnist_fa.recipes import resolve_config

    if kind == "report":
        tc, _ = resolve_config(None, name, {})
        values = {**tc.flat(), "extra": {"recipe": name}}
    else:
        values = {**COMMON, **cfg, "extra": {"candidate": name}}
    values["data"] = data
    if fold is None:
        values.update(full=True, n_folds=None, fold=None)
    else:
        values.update(n_folds=n_folds, fold=fold, full=False)
    if smoke:
        values["epochs"] = 1
    run_name = f"{name}-{'full' if fold is None else f'f{fold}'}"
    t0 = time.time()
    res = train(TrainConfig.build(**values), name=run_name, root=root, quiet=True)
    out = {"kind": kind, "name": name, "fold": fold, "run": run_name, "arch": values["arch"],
           "epochs": values["epochs"], "wall_s": round(time.time() - t0, 1), "device": res.record.device,
           "config": res.record.config.flat()}
    if fold is not None:
        run = load_run(res.path)
        x, y, _ = validation_set(run, run_data(run))
        plain = predict_probs(run, x)
        tta = predict_probs(run, x, tta=True, n=TTA_N)
        np.savez(res.path / "valid_probs.npz", plain=plain.numpy(), tta=tta.numpy(), labels=y)
        out["acc_plain"] = float((plain.argmax(1).numpy() == y).mean())
        out["acc_tta"] = float((tta.argmax(1).numpy() == y).mean())
    return out


def summarise(results: list[dict], root: Path, n_folds: int) -> dict:
    import numpy as np
    import torch

    from kmnist_fa.ensemble import combine

    by = {}
    for r in results:
        if r["kind"] == "candidate" and r["fold"] is not None:
            by.setdefault(r["name"], []).append(r)
    table = {}
    for name, rs in by.items():
        pl, tt = [r["acc_plain"] for r in rs], [r["acc_tta"] for r in rs]
        table[name] = {"arch": rs[0]["arch"], "folds": len(rs), "epochs": rs[0]["epochs"],
                       "plain_mean": statistics.mean(pl), "plain_sd": statistics.stdev(pl) if len(pl) > 1 else 0.0,
                       "tta_mean": statistics.mean(tt), "tta_sd": statistics.stdev(tt) if len(tt) > 1 else 0.0,
                       "wall_s_mean": statistics.mean(r["wall_s"] for r in rs), "config": rs[0]["config"]}
    best = {}
    for name, row in table.items():
        if row["folds"] == n_folds and (row["arch"] not in best or row["tta_mean"] > table[best[row["arch"]]]["tta_mean"]):
            best[row["arch"]] = name
    ensembles = {}
    members_all = [best[a] for a in SHIPPABLE if a in best]
    for k in range(1, len(members_all) + 1):
        for combo in itertools.combinations(members_all, k):
            if not all((root / f"{m}-f{f}" / "valid_probs.npz").exists() for m in combo for f in range(n_folds)):
                continue
            accs = []
            for f in range(n_folds):
                probs = [torch.from_numpy(np.load(root / f"{m}-f{f}" / "valid_probs.npz")["tta"]) for m in combo]
                y = np.load(root / f"{combo[0]}-f{f}" / "valid_probs.npz")["labels"]
                accs.append(float((combine(probs, "mean").argmax(1).numpy() == y).mean()))
            ensembles[" + ".join(combo)] = {"members": list(combo), "tta_mean": statistics.mean(accs),
                                            "tta_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "folds": accs}
    best_ens = max(ensembles, key=lambda k: (ensembles[k]["tta_mean"], -len(ensembles[k]["members"])), default=None)
    report = {r["name"]: {k: r[k] for k in ("arch", "epochs", "acc_plain", "acc_tta", "wall_s")}
              for r in results if r["kind"] == "report"}
    return {"candidates": table, "best": best, "ensembles": ensembles, "best_ensemble": best_ens, "report": report,
            "tta_n": TTA_N, "n_folds": n_folds}


def results_from_runs(root: Path) -> list[dict]:
    """Rebuild the job results from finished run folders (after an interrupted selection
    whose runs were completed with `kmnist-fa train --resume`)."""
    import numpy as np

    from kmnist_fa.runs import RunRecord

    out = []
    for f in sorted(root.glob("*/run.json")):
        rec = RunRecord.read(f.parent)
        if not rec.complete:
            continue
        extra, split = rec.config.extra, rec.config.split
        fold = None if split.full else split.fold
        r = {"kind": "report" if "recipe" in extra and "candidate" not in extra else "candidate",
             "name": extra.get("candidate") or extra.get("recipe"), "fold": fold, "run": rec.name,
             "arch": rec.arch, "epochs": rec.config.optim.epochs, "wall_s": rec.wall_time_s,
             "device": rec.device, "config": rec.config.flat()}
        probs = f.parent / "valid_probs.npz"
        if fold is not None:
            if not probs.exists():
                continue
            z = np.load(probs)
            r["acc_plain"] = float((z["plain"].argmax(1) == z["labels"]).mean())
            r["acc_tta"] = float((z["tta"].argmax(1) == z["labels"]).mean())
        out.append(r)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="1 epoch, 2 folds, two candidates, no report rows")
    ap.add_argument("--from-runs", action="store_true", help="Train nothing: summarise the finished runs "
                    "already in OUT/runs")
    ap.add_argument("--deadline", type=float, default=None, help="Seconds after which unstarted jobs are dropped "
                    "and the selection uses what finished")
    args = ap.parse_args(argv)
    out = Path(args.out)
    root = out / "runs"
    root.mkdir(parents=True, exist_ok=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    cands = dict(list(CANDIDATES.items())[:3:2]) if args.smoke else CANDIDATES
    folds = 2 if args.smoke else args.folds
    jobs = [("candidate", n, c, f) for f in range(folds) for n, c in cands.items()]
    jobs += [("candidate", n, c, None) for n, c in cands.items() if c["arch"] in SHIPPABLE]
    jobs += [] if args.smoke else [("report", n, {}, 0) for n in REPORT]
    # longest first, so the pool does not end waiting on one 100-epoch straggler
    jobs.sort(key=lambda j: -(100 if j[0] == "report" else j[2]["epochs"]))
    t0 = time.time()
    results = []
    import multiprocessing as mp

    if args.from_runs:
        jobs, results = [], results_from_runs(root)
    with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
        futs = {pool.submit(job, k, n, c, str(Path(args.data).resolve()), str(root), folds, f, args.smoke): (n, f)
                for k, n, c, f in jobs}
        for fut in as_completed(futs):
            if args.deadline and time.time() - t0 > args.deadline:
                dropped = sum(f.cancel() for f in futs)
                print(f"deadline reached: dropped {dropped} unstarted jobs", flush=True)
                args.deadline = None
            try:
                r = fut.result()
            except CancelledError:
                continue
            except Exception as e:  # keep going: one failed config must not sink the whole selection
                print(f"FAILED {futs[fut]}: {type(e).__name__}: {e}", flush=True)
                continue
            results.append(r)
            acc = f" plain {r['acc_plain']:.4f} tta {r['acc_tta']:.4f}" if "acc_plain" in r else ""
            print(f"[{time.time() - t0:6.0f}s] {r['run']:28s} {r['wall_s']:6.1f}s{acc}", flush=True)
    summary = summarise(results, root, folds)
    summary["wall_s_total"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps({"summary": summary, "runs": results}, indent=1, default=str))
    with tarfile.open(out / "reference_runs.tar", "w") as tar:
        for arch, name in summary["best"].items():
            if arch in SHIPPABLE and (root / f"{name}-full" / "model.pth").exists():
                tar.add(root / f"{name}-full", arcname=f"{name}-full",
                        filter=lambda ti: None if ti.name.endswith("valid_probs.npz") else ti)
    with tarfile.open(out / "cv_meta.tar.gz", "w:gz") as tar:
        for p in sorted(root.glob("*/run.json")):
            tar.add(p, arcname=f"{p.parent.name}/run.json")
    print(json.dumps({k: summary[k] for k in ("best", "best_ensemble", "wall_s_total")}, indent=1))
    for name, row in sorted(summary["candidates"].items()):
        print(f"{name:22s} plain {row['plain_mean']:.4f}±{row['plain_sd']:.4f}  tta {row['tta_mean']:.4f}±"
              f"{row['tta_sd']:.4f}  ({row['folds']} folds, {row['wall_s_mean']:.0f}s/run)")
    for name, row in sorted(summary["ensembles"].items(), key=lambda kv: -kv[1]["tta_mean"]):
        print(f"ensemble {name:50s} tta {row['tta_mean']:.4f}±{row['tta_sd']:.4f}")
    for name, row in summary["report"].items():
        print(f"{name:22s} fold0 plain {row['acc_plain']:.4f} tta {row['acc_tta']:.4f} ({row['wall_s']:.0f}s)")


if __name__ == "__main__":
    main()
