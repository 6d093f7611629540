"""Copy finished runs into kmnist_fa/reference/ as the shipped reference models.

Each exported run keeps its run.json (renamed, with its source recorded) and gains a
`check` block: its predictions on a fixed batch of labelled images, which the test
suite recomputes to prove the shipped weights still load and behave. `default.json`
names the members of the default ensemble that `kmnist-fa predict` uses and its TTA
settings.

    python tools/export_reference.py cv-out/runs/alexnet7-heavy-40-full:alexnet7 ... \
        --default alexnet7 --tta-n 8 [--tta-beta 0.5] --data ../shared/data/kmnist-10k

A self-training pipeline ships with its record, so `kmnist-fa models show reference/NAME`
shows its lineage; its runs keep their names (NAME.g1 ... NAME):

    python tools/export_reference.py models/default.g1:default.g1 models/default:default \
        --pipeline models/default.pipeline.json --default default --tta-n 4 --tta-beta 0.75 --data ...
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from kmnist_fa.config.options import TTA_BETA, TtaSettings
from kmnist_fa.core.atomic import write_json
from kmnist_fa.data.datasets import load_dataset
from kmnist_fa.infer.predict import load_run, predict_probs
from kmnist_fa.runs.paths import reference_dir
from kmnist_fa.runs.record import RunRecord

CHECK_N = 64


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="SRC_RUN_FOLDER:NAME")
    ap.add_argument("--default", nargs="+", required=True, help="NAMEs in the default ensemble")
    ap.add_argument("--tta-n", type=int, default=8)
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--tta-beta", type=float, default=None, help="TTA's clean-pass weight (default fastai's 0.25)")
    ap.add_argument("--tta-aug", default=None, help="augmentation TTA replays (default each run's training preset)")
    ap.add_argument("--data", required=True, help="labelled data for the check batch (train images 0..63)")
    ap.add_argument("--data-label", default="../shared/data/kmnist-10k",
                    help="what to record as the runs' data root (the path users have)")
    ap.add_argument("--chosen-by", default="")
    ap.add_argument("--pipeline", default=None, help="a pipeline record (models/NAME.pipeline.json) to ship beside its runs")
    args = ap.parse_args(argv)
    dest = reference_dir()
    dest.mkdir(parents=True, exist_ok=True)
    data = load_dataset(data=args.data)
    for spec in args.runs:
        src, name = spec.rsplit(":", 1)
        src, out = Path(src), dest / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir()
        for f in ("model.pth", "history.csv", "curves.png"):
            shutil.copy2(src / f, out / f)
        rec = RunRecord.read(src)
        rec.extra["reference"] = {"source_run": rec.name, "trained_on": rec.device}
        rec.name = name
        rec.data.root = args.data_label
        rec.write(out)
        run = load_run(out, cpu=True)
        probs = predict_probs(run, data.train_x[:CHECK_N])
        rec.extra["check"] = {"images": f"train images 0..{CHECK_N - 1} of {data.name}",
                              "classes": probs.argmax(1).tolist(),
                              "top_prob": [round(float(p), 5) for p in probs.max(1).values]}
        rec.write(out)
        print(f"{name}: {rec.n_params:,} params, {(out / 'model.pth').stat().st_size / 1e6:.1f} MB")
    if args.pipeline:
        shutil.copy2(args.pipeline, dest / Path(args.pipeline).name)
    tta = TtaSettings(on=not args.no_tta, n=args.tta_n, beta=TTA_BETA if args.tta_beta is None else args.tta_beta,
                      aug=args.tta_aug)
    write_json(dest / "default.json", {"members": args.default, **tta.to_json(), "chosen_by": args.chosen_by})


if __name__ == "__main__":
    main()
