"""Measure accuracy levers by k-fold cross-validation on the labelled images, one row each.

A lever is a shipped recipe plus option overrides (`LEVERS`). Each one trains on the
same stratified folds (the toolkit's sweep engine: re-running continues where it
stopped), then every validation fold is predicted plain and with fastai TTA, with the
run's training preset and with `light`, at `TTA_NS` passes. The clean pass and the mean of
the augmented passes are cached separately, so the clean-pass weight (`BETAS`) and the
number of passes are chosen by CV afterwards, without predicting again. Ensembles are
every combination of up to three levers, scored fold by fold on the same images.

Self-training and distillation (`pseudo`, `teacher` in a lever's overrides) name their
teacher levers: fold k's teachers are those levers' fold-k runs, which never saw fold
k's validation images, so the CV stays honest (the toolkit refuses any other teacher).

    python tools/cv_levers.py --data ../shared/data/kmnist-10k --out levers --jobs 2
    python tools/cv_levers.py --data ../shared/data/kmnist-10k --out /tmp/lv --smoke
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name: (recipe, overrides); `pseudo` and `teacher` values name teacher levers (comma-separated; trained first)
LEVERS = {
    "fast": ("fast", {}),
    "fast-no-ema": ("fast", {"ema": 0.0}),
    "fast-erase": ("fast", {"erase": 0.25}),
    "fast-pseudo": ("fast", {"pseudo": "fast", "pseudo_threshold": 0.8}),
    "fast-long": ("fast", {"epochs": 32}),
    "fast-14ep-lr3": ("fast", {"epochs": 14, "lr": 3e-3}),
    "fast-14ep-lr3-pseudo95": ("fast", {"epochs": 14, "lr": 3e-3, "pseudo": "fast-14ep-lr3", "pseudo_threshold": 0.95}),
    "fast-pseudo2": ("fast", {"pseudo": "fast-pseudo", "pseudo_threshold": 0.8}),
    "fast-pseudo-long": ("fast", {"epochs": 32, "pseudo": "fast", "pseudo_threshold": 0.8}),
    "fast-pseudo-long-ens": ("fast", {"epochs": 32, "pseudo": "fast-pseudo,fast-pseudo2,fast-pseudo-long",
                                      "pseudo_threshold": 0.8, "keep": "last"}),
    "fast-kd-long": ("fast", {"epochs": 32, "teacher": "fast-pseudo,fast-pseudo2", "distill_weight": 0.7,
                              "pseudo": "fast-pseudo,fast-pseudo2", "pseudo_threshold": 0.5, "keep": "last"}),
}
TTA_NS = (4, 8)
BETAS = (0.0, 0.25, 0.5, 0.75)
TTA_PRESETS = ("train", "light")


def lever_config(name: str, data: str, n_folds: int, out: Path, smoke: bool):
    from kmnist_fa.recipes import resolve_config

    recipe, over = LEVERS[name]
    over = dict(over)
    if smoke:
        over["epochs"] = 1
    for key in ("pseudo", "teacher"):  # fold k's teachers: the teacher levers' own fold-k runs
        if key in over:
            over[key] = ",".join(str(member_dir(out, t, lever_config(t, data, n_folds, out, smoke), "{fold}")
                                     .resolve()) for t in over[key].split(","))
    cfg, _ = resolve_config(None, recipe, {**over, "data": data, "n_folds": n_folds, "fold": 0})
    return cfg


def member_dir(out: Path, name: str, cfg, fold) -> Path:
    """A lever's fold run: a member of its one-config sweep (named by the sweep engine)."""
    from kmnist_fa.search import config_id, member_name

    return out / name / member_name(config_id({"epochs": cfg.optim.epochs}), fold)


def train_lever(name: str, data: str, folds: list[int], n_folds: int, out: Path, jobs: int, smoke: bool) -> list[Path]:
    from kmnist_fa.search import member_status
    from kmnist_fa.sweep import Job, run_sweep

    cfg = lever_config(name, data, n_folds, out, smoke)
    dirs = [member_dir(out, name, cfg, f) for f in folds]
    if all(member_status(d) == "complete" for d in dirs):
        return dirs
    outcome = run_sweep(cfg, [Job({"epochs": cfg.optim.epochs}, f, d.name) for f, d in zip(folds, dirs)], out / name,
                        jobs, threads=1)
    bad = {k: v for k, v in outcome.items() if not v.startswith(("trained", "resumed", "skipped"))}
    if bad:
        raise SystemExit(f"{name}: " + "; ".join(f"{k}: {v}" for k, v in bad.items()))
    return dirs


def fold_probs(run_dir: Path) -> Path:
    """Cache of a fold run's validation predictions: plain, and TTA clean/augmented parts per preset and n."""
    import numpy as np

    cache = run_dir / "valid_tta_parts.npz"
    if cache.exists():
        return cache
    from kmnist_fa.atomic import write_with
    from kmnist_fa.inference import load_run, predict_probs, run_data, tta_parts, validation_set

    run = load_run(run_dir)
    x, y, _ = validation_set(run, run_data(run))
    arrays = {"labels": y, "plain": predict_probs(run, x).numpy()}
    for preset in TTA_PRESETS:
        r = run if preset == "train" else load_run(run_dir, tta_aug=preset)
        for n in TTA_NS:
            _, aug, _ = tta_parts(r, x, n)
            arrays[f"aug_{preset}_{n}"] = aug.numpy()

    def save(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a temp name
            np.savez(f, **arrays)

    write_with(cache, save)
    return cache


def probs_for(z, mode: str):
    """Probabilities of a prediction mode: `plain` or `tta:<preset>:<n>:<beta>`."""
    import numpy as np

    if mode == "plain":
        return z["plain"]
    _, preset, n, beta = mode.split(":")
    aug = z[f"aug_{preset}_{n}"]
    return np.asarray(aug + float(beta) * (z["plain"] - aug))  # fastai's tta: lerp(aug, clean, beta)


def modes() -> list[str]:
    return ["plain"] + [f"tta:{p}:{n}:{b}" for p in TTA_PRESETS for n in TTA_NS for b in BETAS]


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(dirs: dict[str, list[Path]], folds: list[int]) -> dict:
    import numpy as np

    from kmnist_fa.runs import RunRecord

    names = list(dirs)
    zs = {n: [np.load(fold_probs(d)) for d in dirs[n]] for n in names}
    rows = {}
    for n in names:
        accs = {m: [float((probs_for(z, m).argmax(1) == z["labels"]).mean()) for z in zs[n]] for m in modes()}
        recs = [RunRecord.read(d) for d in dirs[n]]
        best_tta = max((m for m in accs if m != "plain"), key=lambda m: statistics.mean(accs[m]))
        rows[n] = {"plain": _mean_sd(accs["plain"]), "tta_default": _mean_sd(accs["tta:train:4:0.25"]),
                   "tta_light": _mean_sd(accs["tta:light:4:0.25"]), "best_tta_mode": best_tta,
                   "best_tta": _mean_sd(accs[best_tta]), "fold_plain": accs["plain"],
                   # the last epoch's validation: what the same recipe trained --full ships, not picked on the fold
                   "last_epoch": _mean_sd([r.history[-1]["accuracy"] for r in recs]),
                   "keep": recs[0].config.keep,
                   "wall_s_mean": statistics.mean(r.wall_time_s for r in recs),
                   "epochs": recs[0].config.optim.epochs, "pseudo_images": [r.extra.get("pseudo", {}).get("images")
                                                                           for r in recs],
                   "modes": {m: _mean_sd(a) for m, a in accs.items()}}
    # one TTA mode for every ensemble: the mode best on average over the levers, chosen by CV like the rest
    mode = max(modes()[1:], key=lambda m: statistics.mean(rows[n]["modes"][m][0] for n in names))
    ensembles = {}
    for k in (2, 3):
        for combo in itertools.combinations(names, k):
            for m in ("plain", mode):
                accs = [float((np.mean([probs_for(zs[c][i], m) for c in combo], 0).argmax(1)
                               == zs[combo[0]][i]["labels"]).mean()) for i in range(len(folds))]
                ensembles[f"{' + '.join(combo)} [{m}]"] = {"members": list(combo), "mode": m, "acc": _mean_sd(accs)}
    return {"levers": rows, "ensemble_mode": mode, "ensembles": ensembles, "folds": folds}


def _pct(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}%"


def markdown(summary: dict) -> str:
    """The levers table (gain against the first lever's plain accuracy) and the best ensembles."""
    rows = summary["levers"]
    base_last = next(iter(rows.values()))["last_epoch"][0]
    lines = ["| lever | epochs | model.pth | plain | last epoch | TTA (train preset, n=4, β=0.25) | best TTA mode | "
             "best TTA | gain (last epoch) | s/run |", "|---|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['epochs']} | {r['keep']} | {_pct(r['plain'])} | {_pct(r['last_epoch'])} | "
                     f"{_pct(r['tta_default'])} | `{r['best_tta_mode']}` | {_pct(r['best_tta'])} | "
                     f"{100 * (r['last_epoch'][0] - base_last):+.2f} pp | {r['wall_s_mean']:.0f} |")
    lines += ["", "| ensemble (mean of probabilities) | accuracy |", "|---|---:|"]
    for e, r in sorted(summary["ensembles"].items(), key=lambda kv: -kv[1]["acc"][0])[:12]:
        lines.append(f"| {e} | {_pct(r['acc'])} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names from LEVERS")
    ap.add_argument("--smoke", action="store_true", help="1 epoch, 2 folds")
    args = ap.parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    out, data = Path(args.out), str(Path(args.data).resolve())
    names = [n.strip() for n in args.levers.split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        ap.error(f"--levers: unknown {', '.join(unknown)} (known: {', '.join(LEVERS)})")
    folds = list(range(2 if args.smoke else args.folds))
    n_folds = 2 if args.smoke else args.folds
    t0 = time.time()
    # in order: a self-training lever's teacher lever comes first in LEVERS
    dirs = {n: train_lever(n, data, folds, n_folds, out, args.jobs, args.smoke) for n in names}
    summary = summarise(dirs, folds)
    summary["wall_s_total"] = round(time.time() - t0, 1)
    (out / "levers.json").write_text(json.dumps(summary, indent=1))
    (out / "levers.md").write_text(markdown(summary))
    for n, r in summary["levers"].items():
        print(f"{n:18s} plain {r['plain'][0]:.4f}±{r['plain'][1]:.4f}  tta {r['tta_default'][0]:.4f}  "
              f"light {r['tta_light'][0]:.4f}  best {r['best_tta_mode']} {r['best_tta'][0]:.4f}±{r['best_tta'][1]:.4f}"
              f"  {r['wall_s_mean']:.0f}s/run")
    for e, r in sorted(summary["ensembles"].items(), key=lambda kv: -kv[1]["acc"][0])[:10]:
        print(f"ensemble {e:60s} {r['acc'][0]:.4f}±{r['acc'][1]:.4f}")
    return summary


if __name__ == "__main__":
    main()
