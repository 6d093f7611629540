"""Cross-validation on the labelled images: accuracy levers, TTA settings, ensembles, and the default recipes.

Every score is on held-out labelled images (the test images are never scored; the
self-training levers train on them, unlabelled). Every option is trained on the same
stratified folds by the toolkit's sweep engine (`kmnist_fa.pipelines.sweep`), so
re-running a command continues where it stopped: finished runs are kept, interrupted
ones resume. Each validation fold is then predicted once, plain and with fastai TTA
(the run's training preset and `light`, at `TTA_NS` passes), into one cache beside the
run (`PREDS_FILE`). The clean pass and the mean of the augmented passes are kept apart,
so the clean-pass weight β (`BETAS`) and the number of passes are chosen by CV
afterwards without predicting again, and every subcommand scores from the same cache.

    levers    a shipped recipe plus option overrides per row (`LEVERS`): the levers
              table, every TTA setting, ensembles of two and three levers, and each
              fold's last-epoch accuracy beside model.pth's, and the default: among the
              honest options, the cheapest within one standard error of the best
              (`one_se_choice`). Self-training and distillation levers name teacher
              levers: fold k's teachers are those levers' fold-k runs, which never saw
              fold k's validation images.
    select    each architecture's default: its candidates (`CANDIDATES`, or derived
              from its default recipe for any other registered architecture), the
              report's recipes on fold 0 beside them, the candidate with the best mean
              TTA accuracy per architecture (`SELECT_MODE`), every ensemble of those,
              and the chosen candidates trained on all labelled images for shipping.
    ensemble  any members' fold runs (a lever's folder, or one config of a sweep)
              combined fold by fold, at every prediction mode, and the cheapest within
              one standard error of the best.

`--jobs N` trains N runs at once, one CPU thread each: on a GPU these small models are
bound by Python overhead, so many at once fill the card.

    python tools/cv.py levers --data ../shared/data/kmnist-10k --out levers --jobs 2
    python tools/cv.py select --data ../shared/data/kmnist-10k --out cv-out --jobs 14
    python tools/cv.py ensemble levers/fast-pseudo-long-ens levers/fast-kd-long
    python tools/cv.py select --data ../shared/data/kmnist-10k --out /tmp/cv --archs lenet5 --smoke
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import statistics
import tarfile
import time
from pathlib import Path

import numpy as np
import torch

from kmnist_fa.config.options import TTA_BETA, TTA_N, TrainConfig, TtaSettings
from kmnist_fa.config.recipes import list_recipes, resolve_config
from kmnist_fa.core.atomic import write_json, write_text, write_with
from kmnist_fa.core.errors import KmnistError
from kmnist_fa.infer.ensemble import METHODS, accuracy, combine
from kmnist_fa.infer.predict import load_run, predict_probs, run_data, tta_parts, validation_set
from kmnist_fa.models.registry import get_arch
from kmnist_fa.pipelines.search import config_id, member_name, member_status
from kmnist_fa.pipelines.sweep import Job, run_sweep
from kmnist_fa.pipelines.training import train
from kmnist_fa.runs.record import RunRecord

# ---------------------------------------------------------------- predictions, cached per fold run

PREDS_FILE = "valid_tta_parts.npz"  # the name cv_levers.py gave it, so its caches are read, not predicted again
TTA_NS = (4, 8)
BETAS = (0.0, 0.25, 0.5, 0.75)
TTA_PRESETS = ("train", "light")


def fold_preds(run_dir: Path) -> Path:
    """A fold run's validation predictions (cached): labels, plain, and per preset and n the mean augmented pass."""
    cache = run_dir / PREDS_FILE
    if cache.exists():
        return cache
    run = load_run(run_dir)
    x, y, _ = validation_set(run, run_data(run))
    arrays = {"labels": y, "plain": predict_probs(run, x).numpy()}
    for preset in TTA_PRESETS:
        r = run if preset == "train" else load_run(run_dir, tta=TtaSettings(aug=preset))
        for n in TTA_NS:
            _, aug, _ = tta_parts(r, x, n)
            arrays[f"aug_{preset}_{n}"] = aug.numpy()

    def save(tmp: Path):
        with open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a temp name
            np.savez(f, **arrays)

    write_with(cache, save)
    return cache


def modes() -> list[str]:
    """Every prediction mode the cache scores: `plain` and `tta:<preset>:<n>:<beta>`."""
    return ["plain"] + [f"tta:{p}:{n}:{b}" for p in TTA_PRESETS for n in TTA_NS for b in BETAS]


def probs_for(z, mode: str) -> np.ndarray:
    """Probabilities of a prediction mode, from a fold's cache."""
    if mode == "plain":
        return z["plain"]
    _, preset, n, beta = mode.split(":")
    aug = z[f"aug_{preset}_{n}"]
    return np.asarray(aug + float(beta) * (z["plain"] - aug))  # fastai's tta: lerp(aug, clean, beta)


def fold_accuracy(zs: list, mode: str, method: str = "mean") -> float:
    """Accuracy on one fold of one run or of an ensemble of runs (`zs`: their caches of that fold)."""
    if any(not np.array_equal(z["labels"], zs[0]["labels"]) for z in zs[1:]):
        raise SystemExit("ensemble members do not share a fold's validation images (other data, folds or seed)")
    return accuracy(combine([torch.from_numpy(probs_for(z, mode)) for z in zs], method), zs[0]["labels"])


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def cv_row(dirs: list[Path]) -> dict:
    """One option's scores over its fold runs: every prediction mode, the last epoch, its cost; per fold too
    (`fold_modes`, `fold_last_epoch`), for the paired comparisons of the one-standard-error rule."""
    zs = [np.load(fold_preds(d)) for d in dirs]
    recs = [RunRecord.read(d) for d in dirs]
    accs = {m: [fold_accuracy([z], m) for z in zs] for m in modes()}
    lasts = [r.history[-1]["accuracy"] for r in recs]
    best_tta = max(modes()[1:], key=lambda m: statistics.mean(accs[m]))
    return {"folds": len(dirs), "epochs": recs[0].config.optim.epochs, "keep": recs[0].config.keep,
            "plain": mean_sd(accs["plain"]), "fold_plain": accs["plain"],
            "tta_default": mean_sd(accs[f"tta:train:{TTA_N}:{TTA_BETA}"]),
            "tta_light": mean_sd(accs[f"tta:light:{TTA_N}:{TTA_BETA}"]),
            "best_tta_mode": best_tta, "best_tta": mean_sd(accs[best_tta]),
            # the last epoch's validation: what the same recipe trained --full ships, not picked on the fold
            "last_epoch": mean_sd(lasts), "fold_last_epoch": lasts,
            "wall_s_mean": statistics.mean(r.wall_time_s for r in recs),
            "pseudo_images": [r.extra.get("pseudo", {}).get("images") for r in recs],
            "modes": {m: mean_sd(a) for m, a in accs.items()}, "fold_modes": accs, "config": recs[0].config.flat(),
            "dirs": [str(d) for d in dirs]}


def score_ensembles(members: dict[str, list[Path]], sizes, ens_modes: list[str], method: str = "mean") -> dict:
    """Every combination of `sizes` members at each mode, fold by fold (members' runs listed in the same fold order)."""
    zs = {n: [np.load(fold_preds(d)) for d in dirs] for n, dirs in members.items()}
    n_folds = len(next(iter(zs.values()), []))
    out = {}
    for k in sizes:
        for combo in itertools.combinations(members, k):
            for m in ens_modes:
                accs = [fold_accuracy([zs[c][i] for c in combo], m, method) for i in range(n_folds)]
                out[f"{' + '.join(combo)} [{m}]"] = {"members": list(combo), "mode": m, "acc": mean_sd(accs),
                                                     "folds": accs}
    return out


# ---------------------------------------------------------------- the one-standard-error rule

# Accuracies are image counts over a fold's size, so an option's mean difference and its standard error can be
# equal exactly (the shipped default's: both 0.4 images of 1,200). Rounding must not decide such a tie: float
# arithmetic, and the training history's accuracies, which are float32 (an image of a 60,000-image fold is 1.7e-5).
TIE = 1e-6
NEAR = 3  # the refused options cheaper than the chosen one listed beside it: the closest to the bar


def passes(mode: str) -> int:
    """Forward passes per image of a prediction mode: one, or fastai TTA's n augmented passes and the clean one."""
    return 1 if mode == "plain" else int(mode.split(":")[2]) + 1


def one_se_choice(folds: dict[str, list[float]], cost: dict[str, float]) -> dict:
    """The one-standard-error rule: the cheapest option whose mean accuracy is within one standard error of the best.

    `folds`: each option's accuracy per fold, every option on the same folds in the same order; `cost`: its
    prediction cost (models x forward passes per image). The best has the highest mean (the cheaper on a tie). As
    all options are scored on the same images, the standard error is the paired one, of the per-fold differences
    best - option (stdev / sqrt(K)): a fold that is hard for every option does not widen it, and an option that
    trails the best by a little on every fold is refused. An option is within when its mean difference is at most
    that SE; the cheapest within is chosen, the higher mean on equal cost (the best is within, so one always is).
    Why: a mean that close cannot be told from the best's on these folds, while the extra prediction cost is certain.

    Returns `best`, `chosen` and `candidates`, cheapest first: every option within, and the NEAR refused options
    cheaper than the chosen one that came closest to the bar (mean difference - SE), each with its cost, mean, per
    fold accuracies, mean difference, SE and whether it is within.
    """
    mean = {o: statistics.mean(a) for o, a in folds.items()}
    best = max(folds, key=lambda o: (mean[o], -cost[o]))
    rows = {}
    for o, accs in folds.items():
        diff, sd = mean_sd([b - a for b, a in zip(folds[best], accs, strict=True)])
        se = sd / math.sqrt(len(accs))
        rows[o] = {"cost": cost[o], "mean": mean[o], "folds": accs, "mean_diff": diff, "se": se,
                   "within": diff <= se + TIE}
    chosen = min((o for o, r in rows.items() if r["within"]), key=lambda o: (cost[o], -mean[o]))
    refused = sorted((o for o, r in rows.items() if not r["within"] and r["cost"] < cost[chosen]),
                     key=lambda o: rows[o]["mean_diff"] - rows[o]["se"])[:NEAR]
    shown = [o for o, r in rows.items() if r["within"]] + refused
    return {"best": best, "chosen": chosen,
            "candidates": {o: rows[o] for o in sorted(shown, key=lambda o: (cost[o], -mean[o]))}}


def ensemble_options(ensembles: dict) -> tuple[dict, dict]:
    """Options for the rule from `score_ensembles`' entries: their per-fold accuracies and prediction costs."""
    return ({k: e["folds"] for k, e in ensembles.items()},
            {k: len(e["members"]) * passes(e["mode"]) for k, e in ensembles.items()})


def choice_lines(choice: dict) -> list[str]:
    """The rule's outcome as a markdown table, cheapest first (accuracies in percent, differences in pp)."""
    lines = [f"Best: `{choice['best']}`, {100 * choice['candidates'][choice['best']]['mean']:.2f}%. Chosen, the "
             f"cheapest within one standard error of the best (paired over folds): `{choice['chosen']}`.", "",
             "| option | cost (models × passes) | mean | below best | SE | within |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {o} | {r['cost']} | {100 * r['mean']:.2f}% | {100 * r['mean_diff']:.3f} pp | {100 * r['se']:.3f} pp"
              f" | {'yes' if r['within'] else 'no'} |" for o, r in choice["candidates"].items()]
    return lines


def sweep(base: TrainConfig, jobs: list[Job], root: Path, n_jobs: int, threads: int | None = 1) -> list[str]:
    """Train a sweep's missing fold runs (finished ones are kept, interrupted ones resume); returns the failures."""
    if all(member_status(root / j.name) == "complete" for j in jobs):
        return []  # nothing to train: not even the sweep's workers are started
    outcome = run_sweep(base, jobs, root, n_jobs, threads=threads)
    return [f"{k}: {v}" for k, v in outcome.items() if not v.startswith(("trained", "resumed", "skipped"))]


def _pct(ms: tuple[float, float]) -> str:
    return f"{100 * ms[0]:.2f} ± {100 * ms[1]:.2f}%"


def print_choice(choice: dict) -> None:
    best, chosen = (choice["candidates"][choice[k]] for k in ("best", "chosen"))
    print(f"best {choice['best']} {best['mean']:.4f} (cost {best['cost']})")
    print(f"chosen (one-standard-error rule) {choice['chosen']} {chosen['mean']:.4f} (cost {chosen['cost']}): "
          f"{chosen['mean_diff']:.4f} below the best, SE {chosen['se']:.4f}")


def _top_ensembles(ensembles: dict, k: int) -> list[tuple[str, dict]]:
    return sorted(ensembles.items(), key=lambda kv: -kv[1]["acc"][0])[:k]


# ---------------------------------------------------------------- levers

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


def lever_config(name: str, data: str, n_folds: int, out: Path, smoke: bool) -> TrainConfig:
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


def member_dir(out: Path, name: str, cfg: TrainConfig, fold) -> Path:
    """A lever's fold run: a member of its one-config sweep (named by the sweep engine)."""
    return out / name / member_name(config_id({"epochs": cfg.optim.epochs}), fold)


def train_lever(name: str, data: str, folds: list[int], out: Path, jobs: int, smoke: bool) -> list[Path]:
    cfg = lever_config(name, data, len(folds), out, smoke)
    dirs = [member_dir(out, name, cfg, f) for f in folds]
    bad = sweep(cfg, [Job({"epochs": cfg.optim.epochs}, f, d.name) for f, d in zip(folds, dirs)], out / name, jobs)
    if bad:  # a later lever may be taught by this one: stop here, a re-run continues
        raise SystemExit(f"{name}: " + "; ".join(bad))
    return dirs


def summarise_levers(dirs: dict[str, list[Path]], folds: list[int]) -> dict:
    """The levers' rows and ensembles, and the default the one-standard-error rule picks among the honest options:
    every lever's last epoch, and the levers whose model.pth is their last epoch (`keep` last) and their
    ensembles (`honest_ensembles`) at every prediction mode. The other levers' model.pth is the epoch picked on
    the fold's validation images, so their plain and TTA scores are not honest."""
    rows = {n: cv_row(d) for n, d in dirs.items()}
    # one TTA mode for every ensemble: the mode best on average over the levers, chosen by CV like the rest
    mode = max(modes()[1:], key=lambda m: statistics.mean(r["modes"][m][0] for r in rows.values()))
    honest = score_ensembles({n: d for n, d in dirs.items() if rows[n]["keep"] == "last"}, (2, 3), modes())
    accs, cost = {}, {}
    for n, r in rows.items():
        accs[f"{n} [last epoch]"], cost[f"{n} [last epoch]"] = r["fold_last_epoch"], 1
        if r["keep"] == "last":  # its plain score is its last epoch's
            for m in modes()[1:]:
                accs[f"{n} [{m}]"], cost[f"{n} [{m}]"] = r["fold_modes"][m], passes(m)
    ens_accs, ens_cost = ensemble_options(honest)
    return {"levers": rows, "ensemble_mode": mode, "ensembles": score_ensembles(dirs, (2, 3), ["plain", mode]),
            "honest_ensembles": honest, "choice": one_se_choice({**accs, **ens_accs}, {**cost, **ens_cost}),
            "folds": folds}


def levers_markdown(summary: dict) -> str:
    """The levers table (gain against the first lever's last-epoch accuracy), the best ensembles, and the default
    chosen by the one-standard-error rule."""
    rows = summary["levers"]
    base_last = next(iter(rows.values()))["last_epoch"][0]
    lines = [f"| lever | epochs | model.pth | plain | last epoch | TTA (train preset, n={TTA_N}, β={TTA_BETA}) | "
             "best TTA mode | best TTA | gain (last epoch) | s/run |",
             "|---|---:|---|---:|---:|---:|---|---:|---:|---:|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['epochs']} | {r['keep']} | {_pct(r['plain'])} | {_pct(r['last_epoch'])} | "
                     f"{_pct(r['tta_default'])} | `{r['best_tta_mode']}` | {_pct(r['best_tta'])} | "
                     f"{100 * (r['last_epoch'][0] - base_last):+.2f} pp | {r['wall_s_mean']:.0f} |")
    lines += ["", "| ensemble (mean of probabilities) | accuracy |", "|---|---:|"]
    lines += [f"| {e} | {_pct(r['acc'])} |" for e, r in _top_ensembles(summary["ensembles"], 12)]
    lines += ["", "## Choice by the one-standard-error rule", "",
              "Options: every lever's last epoch; the levers that keep their last epoch, and their ensembles, at "
              "every prediction mode. Cost: models × forward passes per image (TTA with n passes: n + 1). Listed: "
              f"every option within one standard error of the best, and the {NEAR} cheaper ones that came closest.", ""]
    lines += choice_lines(summary["choice"])
    return "\n".join(lines) + "\n"


def cmd_levers(args, ap) -> dict:
    names = [n.strip() for n in (args.levers or ",".join(LEVERS)).split(",") if n.strip()]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        ap.error(f"--levers: unknown {', '.join(unknown)} (known: {', '.join(LEVERS)})")
    out, data, folds = Path(args.out), str(Path(args.data).resolve()), list(range(args.folds))
    t0 = time.time()
    # in order: a self-training lever's teacher lever comes first in LEVERS
    dirs = {n: train_lever(n, data, folds, out, args.jobs, args.smoke) for n in names}
    summary = summarise_levers(dirs, folds)
    summary["wall_s_total"] = round(time.time() - t0, 1)
    write_json(out / "levers.json", summary)
    write_text(out / "levers.md", levers_markdown(summary))
    for n, r in summary["levers"].items():
        print(f"{n:18s} plain {r['plain'][0]:.4f}±{r['plain'][1]:.4f}  tta {r['tta_default'][0]:.4f}  "
              f"light {r['tta_light'][0]:.4f}  best {r['best_tta_mode']} {r['best_tta'][0]:.4f}±{r['best_tta'][1]:.4f}"
              f"  last epoch {r['last_epoch'][0]:.4f}  {r['wall_s_mean']:.0f}s/run")
    for e, r in _top_ensembles(summary["ensembles"], 10):
        print(f"ensemble {e:60s} {r['acc'][0]:.4f}±{r['acc'][1]:.4f}")
    print_choice(summary["choice"])
    return summary


# ---------------------------------------------------------------- select: each architecture's default

REPORT_ARCHS = ("lenet5", "alexnet5", "alexnet7")  # the report's architectures: the ones shipped in reference/
COMMON = dict(opt="adam", schedule="one-cycle", bs=64, label_smoothing=0.1)  # what every candidate shares
# the candidates the shipped defaults were chosen from; an architecture without any here gets derived ones
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
SWEPT = ("lr", "epochs", "aug", "bn")  # what candidates of one architecture differ in
SELECT_MODE = "tta:train:8:0.25"  # the shipped defaults were chosen on TTA with the training preset, 8 passes


def candidates(archs: list[str]) -> dict[str, dict]:
    """Each architecture's candidates: its rows of CANDIDATES, or, for any other registered architecture,
    its default recipe's LR and epochs (the toolkit's, without one) with `light` and with `heavy` augmentation."""
    out = {}
    for arch in archs:
        get_arch(arch)  # an unknown name stops here, listing the registered ones
        own = {k: c for k, c in CANDIDATES.items() if c["arch"] == arch}
        if not own:
            base, _ = resolve_config(arch, None, {})
            epochs = base.optim.epochs
            own = {f"{arch}-{aug}-{epochs}": dict(arch=arch, lr=base.optim.lr, epochs=epochs, aug=aug)
                   for aug in ("light", "heavy")}
        out.update(own)
    return out


def candidate_jobs(cands: dict, data: str, folds: list[int]) -> dict:
    """Per architecture: the base config, one sweep job per candidate x fold, and config id -> candidate name."""
    out = {}
    for arch in dict.fromkeys(c["arch"] for c in cands.values()):
        base = TrainConfig.build(**COMMON, arch=arch, data=data, n_folds=len(folds), fold=0)
        jobs, names = [], {}
        for name, c in cands.items():
            if c["arch"] == arch:
                values = {k: c.get(k, base.get(k)) for k in SWEPT}
                names[config_id(values)] = name
                jobs += [Job(values, f, member_name(config_id(values), f)) for f in folds]
        out[arch] = (base, jobs, names)
    return out


def report_recipes(archs: list[str]) -> list[str]:
    """The report's recipes (`report-*`) for these architectures: trained on fold 0 beside the candidates."""
    return [name for name, r in list_recipes().items() if name.startswith("report-") and r.get("arch") in archs]


def summarise_candidates(cand: dict, root: Path, folds: list[int]) -> dict:
    """The candidates' table, each architecture's best (every fold done, best mean SELECT_MODE accuracy), and
    every ensemble of those bests; the best ensemble is the most accurate, the smaller on a tie."""
    table = {}
    for arch, (_, _, names) in cand.items():
        for cid, name in names.items():
            done = [d for d in (root / arch / member_name(cid, f) for f in folds) if member_status(d) == "complete"]
            if done:
                table[name] = {"arch": arch, **cv_row(done)}
    best = {}
    for name, row in table.items():
        arch = row["arch"]
        if row["folds"] == len(folds) and (arch not in best or row["modes"][SELECT_MODE][0]
                                           > table[best[arch]]["modes"][SELECT_MODE][0]):
            best[arch] = name
    members = {best[a]: [Path(d) for d in table[best[a]]["dirs"]] for a in cand if a in best}
    ensembles = score_ensembles(members, range(1, len(members) + 1), [SELECT_MODE])
    best_ens = max(ensembles, key=lambda k: (ensembles[k]["acc"][0], -len(ensembles[k]["members"])), default=None)
    return {"candidates": table, "best": best, "ensembles": ensembles, "best_ensemble": best_ens,
            "select_mode": SELECT_MODE, "folds": folds}


def cmd_select(args, ap) -> dict:
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    try:
        cands = candidates(archs)
    except KmnistError as e:
        ap.error(f"--archs: {e}")
    if args.smoke:
        cands = {k: {**c, "epochs": 1} for k, c in cands.items()}
    out, data, folds = Path(args.out), str(Path(args.data).resolve()), list(range(args.folds))
    t0 = time.time()
    cand = candidate_jobs(cands, data, folds)
    for arch, (base, jobs, _) in cand.items():
        for line in sweep(base, jobs, out / arch, args.jobs):
            print(f"{arch}/{line}", flush=True)  # the others go on; a re-run retries it
    report = {}
    if not args.smoke:
        for recipe in report_recipes(archs):
            base, _ = resolve_config(None, recipe, {"data": data, "n_folds": len(folds), "fold": 0})
            job = Job({"epochs": base.optim.epochs}, 0, member_name(config_id({"epochs": base.optim.epochs}), 0))
            for line in sweep(base, [job], out / "report" / recipe, 1, threads=None):
                print(f"report/{recipe}/{line}", flush=True)
            if member_status(out / "report" / recipe / job.name) == "complete":
                report[recipe] = cv_row([out / "report" / recipe / job.name])
    summary = summarise_candidates(cand, out, folds)
    summary["report"] = report
    full = {}
    for arch, name in summary["best"].items():  # the chosen candidates, on every labelled image
        base = cand[arch][0]
        cfg = base.replace(**{k: cands[name].get(k, base.get(k)) for k in SWEPT}, n_folds=None, fold=None, full=True)
        path = out / "full" / name
        if not (path / "run.json").exists():
            train(cfg, name=name, root=out / "full", quiet=True, log=lambda m: None)
        full[arch] = str(path)
    summary["full_runs"] = full
    summary["wall_s_total"] = round(time.time() - t0, 1)
    write_json(out / "results.json", summary)
    with tarfile.open(out / "reference_runs.tar", "w") as tar:
        for path in full.values():
            tar.add(path, arcname=Path(path).name)
    for k in ("best", "best_ensemble", "full_runs", "wall_s_total"):
        print(f"{k}: {summary[k]}")
    for name, row in sorted(summary["candidates"].items()):
        print(f"{name:22s} plain {row['plain'][0]:.4f}±{row['plain'][1]:.4f}  tta {row['modes'][SELECT_MODE][0]:.4f}±"
              f"{row['modes'][SELECT_MODE][1]:.4f}  last epoch {row['last_epoch'][0]:.4f}  "
              f"({row['folds']} folds, {row['wall_s_mean']:.0f}s/run)")
    for e, r in _top_ensembles(summary["ensembles"], len(summary["ensembles"])):
        print(f"ensemble {e:60s} {r['acc'][0]:.4f}±{r['acc'][1]:.4f}")
    for name, row in report.items():
        print(f"{name:22s} fold0 plain {row['plain'][0]:.4f} tta {row['modes'][SELECT_MODE][0]:.4f}")
    return summary


# ---------------------------------------------------------------- ensemble: any members' fold runs

def fold_runs(spec: str) -> dict[int, Path]:
    """A member's complete fold runs by fold: every run in a folder (a lever's one-config sweep), or the runs
    named PREFIX-f<k> beside PREFIX (one config of a sweep that holds several, as an architecture's candidates)."""
    p = Path(spec)
    found = p.iterdir() if p.is_dir() and not (p / "run.json").exists() else p.parent.glob(f"{p.name}-*")
    by_fold: dict[int, Path] = {}
    skipped = []
    for d in sorted(found):
        status = member_status(d) if d.is_dir() else "new"
        if status != "complete":
            skipped += [f"{d.name}: {status}"] if status.startswith("unreadable") else []
            continue
        fold = RunRecord.read(d).config.split.fold
        if fold is None:
            continue
        if fold in by_fold:
            raise SystemExit(f"{spec}: two runs of fold {fold} ({by_fold[fold].name}, {d.name}); name one config's "
                             f"runs as {p}/<config> (the part before -f{fold})")
        by_fold[fold] = d
    if not by_fold:
        raise SystemExit(f"{spec}: no finished fold runs" + (f" ({skipped[0]})" if skipped else ""))
    return by_fold


def cmd_ensemble(args, ap) -> dict:
    """Every combination at every mode, and the one-standard-error rule's choice among them (honest when the
    members' model.pth is their last epoch, `--keep last`)."""
    names = [Path(m).name for m in args.members]  # a lever's name, or a config id
    runs = {n: fold_runs(m) for n, m in zip(names if len(set(names)) == len(names) else args.members, args.members)}
    folds = sorted(set.intersection(*(set(r) for r in runs.values())))
    if not folds:
        ap.error("the members share no fold")
    members = {m: [r[f] for f in folds] for m, r in runs.items()}
    ensembles = score_ensembles(members, range(1, len(members) + 1), modes(), args.method)
    for e, r in _top_ensembles(ensembles, args.top):
        print(f"{e:70s} {r['acc'][0]:.4f}±{r['acc'][1]:.4f}  folds {' '.join(f'{a:.4f}' for a in r['folds'])}")
    choice = one_se_choice(*ensemble_options(ensembles))
    print_choice(choice)
    return {"folds": folds, "method": args.method, "ensembles": ensembles, "choice": choice}


# ---------------------------------------------------------------- command line

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    train_args = argparse.ArgumentParser(add_help=False)
    train_args.add_argument("--data", required=True, help="dataset folder (its labelled images are split in folds)")
    train_args.add_argument("--out", required=True, help="folder of the fold runs and results (re-run to continue)")
    train_args.add_argument("--folds", type=int, default=5, help="stratified folds (default 5; 2 with --smoke)")
    train_args.add_argument("--jobs", type=int, default=2, help="runs trained at once, one CPU thread each")
    train_args.add_argument("--smoke", action="store_true", help="1 epoch, 2 folds: a quick run of the whole command")
    lv = sub.add_parser("levers", parents=[train_args], help="levers table, TTA settings and ensembles by k-fold CV",
                        description="Train and score levers (a recipe plus overrides each) on the same folds; "
                                    "writes OUT/levers.json and OUT/levers.md.")
    lv.add_argument("--levers", default=None, help=f"comma-separated lever names (default all: {', '.join(LEVERS)})")
    se = sub.add_parser("select", parents=[train_args], help="each architecture's default and the reference ensemble",
                        description="Choose each architecture's default recipe by k-fold CV and score ensembles of "
                                    "the choices; trains them on all labelled images (OUT/full) and writes "
                                    "OUT/results.json and OUT/reference_runs.tar. The report's recipes "
                                    "(report-*) of these architectures run on fold 0 beside them (not with --smoke).")
    se.add_argument("--archs", default=",".join(REPORT_ARCHS),
                    help=f"comma-separated registered architectures (default {','.join(REPORT_ARCHS)})")
    en = sub.add_parser("ensemble", help="score ensembles of existing fold runs at every prediction mode",
                        description="Combine members' fold runs fold by fold (only the folds all of them have) and "
                                    "score every combination at every prediction mode, from the shared cache.")
    en.add_argument("members", nargs="+", help="a folder of one config's fold runs (a lever), or FOLDER/CONFIG")
    en.add_argument("--method", choices=METHODS, default="mean", help="how members' probabilities combine")
    en.add_argument("--top", type=int, default=20, help="rows printed, best first")
    for cmd, parser in ((cmd_levers, lv), (cmd_select, se), (cmd_ensemble, en)):
        parser.set_defaults(cmd=cmd, parser=parser)
    args = ap.parse_args(argv)
    if args.command != "ensemble":
        args.folds = 2 if args.smoke else args.folds
        os.environ["OMP_NUM_THREADS"] = "1"  # the sweep's worker processes: one thread each
    return args.cmd(args, args.parser)


if __name__ == "__main__":
    main()
