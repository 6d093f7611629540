"""Choose each architecture's default recipe and the reference ensemble by cross-validation.

Everything is decided on the labelled images only (the test images are never read):

1. per architecture, the candidate recipes are a sweep (the toolkit's own engine,
   `kmnist_fa.sweep` on `kmnist_fa.search`) over K stratified folds in OUT/<arch>/;
   each validation fold is then predicted plain and with fastai TTA (cached beside the run);
2. the report's recipes are trained on fold 0 (a fixed holdout, comparable with the
   candidates' fold 0), one sweep each in OUT/report/<recipe>/;
3. per architecture the candidate with the best mean TTA accuracy becomes
   `default-<arch>`; ensembles of those defaults are scored fold by fold;
4. the chosen candidates are trained on all labelled images (`--full`) for shipping.

Re-running the same command continues where it stopped (finished runs are kept,
interrupted ones resume). `--jobs N` trains N runs at once, one CPU thread each: on
a GPU these small models are bound by Python overhead, so many at once fill the card.

    python tools/select_defaults.py --data ../shared/data/kmnist-10k --out cv-out --jobs 14
    python tools/select_defaults.py --data ../shared/data/kmnist-10k --out /tmp/cv --smoke
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
SWEPT = ("lr", "epochs", "aug", "bn")  # what candidates of one architecture differ in


def candidate_jobs(cands: dict, data: str, n_folds: int, folds: list[int]):
    """Per architecture: the base config, and one sweep job per candidate x fold (name -> jobs)."""
    from kmnist_fa.config import TrainConfig
    from kmnist_fa.search import config_id, member_name
    from kmnist_fa.sweep import Job

    out = {}
    for arch in dict.fromkeys(c["arch"] for c in cands.values()):
        base = TrainConfig.build(**COMMON, arch=arch, data=data, n_folds=n_folds, fold=0)
        jobs, names = [], {}
        for name, c in cands.items():
            if c["arch"] != arch:
                continue
            values = {k: c.get(k, base.get(k)) for k in SWEPT}
            names[config_id(values)] = name
            jobs += [Job(values, f, member_name(config_id(values), f)) for f in folds]
        out[arch] = (base, jobs, names)
    return out


def report_jobs(data: str, n_folds: int):
    from kmnist_fa.recipes import resolve_config
    from kmnist_fa.search import config_id, member_name
    from kmnist_fa.sweep import Job

    out = {}
    for recipe in REPORT:
        base, _ = resolve_config(None, recipe, {"data": data, "n_folds": n_folds, "fold": 0})
        values = {"epochs": base.optim.epochs}
        out[recipe] = (base, [Job(values, 0, member_name(config_id(values), 0))])
    return out


def valid_probs(run_dir: Path) -> dict:
    """Plain and TTA accuracy on a fold run's validation images (probabilities cached beside the run)."""
    import numpy as np

    cache = run_dir / "valid_probs.npz"
    if not cache.exists():
        from kmnist_fa.atomic import write_with
        from kmnist_fa.inference import load_run, predict_probs, run_data, validation_set

        run = load_run(run_dir)
        x, y, _ = validation_set(run, run_data(run))
        plain, tta = predict_probs(run, x), predict_probs(run, x, tta=True, n=TTA_N)

        def save(tmp: Path):
            with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a temp name
                np.savez(f, plain=plain.numpy(), tta=tta.numpy(), labels=y)

        write_with(cache, save)
    z = np.load(cache)
    return {"acc_plain": float((z["plain"].argmax(1) == z["labels"]).mean()),
            "acc_tta": float((z["tta"].argmax(1) == z["labels"]).mean())}


def summarise(cand: dict, root: Path, folds: list[int]) -> dict:
    import numpy as np
    import torch

    from kmnist_fa.ensemble import combine
    from kmnist_fa.runs import RunRecord
    from kmnist_fa.search import member_name, member_status

    table = {}
    for arch, (base, jobs, names) in cand.items():
        for cid, name in names.items():
            dirs = [root / arch / member_name(cid, f) for f in folds]
            done = [d for d in dirs if member_status(d) == "complete"]
            if not done:
                continue
            accs = [valid_probs(d) for d in done]
            pl, tt = [a["acc_plain"] for a in accs], [a["acc_tta"] for a in accs]
            rec = RunRecord.read(done[0])
            table[name] = {"arch": arch, "folds": len(done), "epochs": rec.config.optim.epochs, "dirs": done,
                           "plain_mean": statistics.mean(pl), "plain_sd": statistics.stdev(pl) if len(pl) > 1 else 0.0,
                           "tta_mean": statistics.mean(tt), "tta_sd": statistics.stdev(tt) if len(tt) > 1 else 0.0,
                           "wall_s_mean": statistics.mean(RunRecord.read(d).wall_time_s for d in done),
                           "config": rec.config.flat()}
    best = {}
    for name, row in table.items():
        if row["folds"] == len(folds) and (row["arch"] not in best
                                           or row["tta_mean"] > table[best[row["arch"]]]["tta_mean"]):
            best[row["arch"]] = name
    ensembles = {}
    members_all = [best[a] for a in SHIPPABLE if a in best]
    for k in range(1, len(members_all) + 1):
        for combo in itertools.combinations(members_all, k):
            accs = []
            for i in range(len(folds)):
                zs = [np.load(table[m]["dirs"][i] / "valid_probs.npz") for m in combo]
                probs = combine([torch.from_numpy(z["tta"]) for z in zs], "mean")
                accs.append(float((probs.argmax(1).numpy() == zs[0]["labels"]).mean()))
            ensembles[" + ".join(combo)] = {"members": list(combo), "tta_mean": statistics.mean(accs),
                                            "tta_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0, "folds": accs}
    best_ens = max(ensembles, key=lambda k: (ensembles[k]["tta_mean"], -len(ensembles[k]["members"])), default=None)
    for row in table.values():
        row["dirs"] = [str(d) for d in row["dirs"]]
    return {"candidates": table, "best": best, "ensembles": ensembles, "best_ensemble": best_ens,
            "tta_n": TTA_N, "folds": folds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="LeNet5 candidates only, 1 epoch, 2 folds, no report rows")
    args = ap.parse_args(argv)
    from kmnist_fa.learner import train
    from kmnist_fa.sweep import run_sweep

    out = Path(args.out)
    os.environ["OMP_NUM_THREADS"] = "1"
    data = str(Path(args.data).resolve())
    cands = {k: v for k, v in CANDIDATES.items() if not args.smoke or v["arch"] == "lenet5"}
    if args.smoke:
        cands = {k: {**v, "epochs": 1} for k, v in cands.items()}
    folds = list(range(2 if args.smoke else args.folds))
    t0 = time.time()
    cand = candidate_jobs(cands, data, len(folds), folds)
    outcome = {}
    for arch, (base, jobs, _) in cand.items():
        outcome.update({f"{arch}/{k}": v for k, v in run_sweep(base, jobs, out / arch, args.jobs, threads=1).items()})
    report = {}
    if not args.smoke:
        for recipe, (base, jobs) in report_jobs(data, args.folds).items():
            run_sweep(base, jobs, out / "report" / recipe, 1, threads=None)
            report[recipe] = {"epochs": base.optim.epochs, **valid_probs(out / "report" / recipe / jobs[0].name)}
    for k, v in outcome.items():
        if v.startswith(("failed", "unreadable")):
            print(f"{k}: {v}", flush=True)
    summary = summarise(cand, out, folds)
    summary["report"] = report
    full = {}
    for arch, name in summary["best"].items():  # the chosen candidates, on every labelled image
        if arch in SHIPPABLE:
            cfg = cand[arch][0].replace(**{k: cands[name].get(k, cand[arch][0].get(k)) for k in SWEPT},
                                        n_folds=None, fold=None, full=True)
            path = out / "full" / name
            if not (path / "run.json").exists():
                train(cfg, name=name, root=out / "full", quiet=True, log=lambda m: None)
            full[arch] = str(path)
    summary["full_runs"] = full
    summary["wall_s_total"] = round(time.time() - t0, 1)
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    with tarfile.open(out / "reference_runs.tar", "w") as tar:
        for arch, path in full.items():
            tar.add(path, arcname=Path(path).name)
    print(json.dumps({k: summary[k] for k in ("best", "best_ensemble", "full_runs", "wall_s_total")}, indent=1))
    for name, row in sorted(summary["candidates"].items()):
        print(f"{name:22s} plain {row['plain_mean']:.4f}±{row['plain_sd']:.4f}  tta {row['tta_mean']:.4f}±"
              f"{row['tta_sd']:.4f}  ({row['folds']} folds, {row['wall_s_mean']:.0f}s/run)")
    for name, row in sorted(summary["ensembles"].items(), key=lambda kv: -kv[1]["tta_mean"]):
        print(f"ensemble {name:50s} tta {row['tta_mean']:.4f}±{row['tta_sd']:.4f}")
    for name, row in report.items():
        print(f"{name:22s} fold0 plain {row['acc_plain']:.4f} tta {row['acc_tta']:.4f}")
    return summary


if __name__ == "__main__":
    main()
