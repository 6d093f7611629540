"""What a prediction hands back, in one place for `predict` and the torch-free runtime: submission and
probability CSVs, the rows of `--json` and `classify`, the table's rows, and a note of what was used.

Probabilities are N x C array-likes (numpy arrays or CPU torch tensors alike), so a CSV written
without torch is byte-identical to one written with it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .atomic import csv_text, write_text


def submission_csv(ids: Sequence[str], classes) -> str:
    """Kaggle `Id,Category` text: header, one row per input in order, LF line ends."""
    return csv_text([{"Id": i, "Category": int(c)} for i, c in zip(ids, classes)], ["Id", "Category"])


def probs_csv(ids: Sequence[str], probs, class_names: Sequence[str]) -> str:
    cols = ["Id", "Category", *class_names]
    return csv_text([dict(zip(cols, [i, int(np.argmax(row)), *(f"{p:.6f}" for p in row)]))
                     for i, row in zip(ids, np.asarray(probs).tolist())], cols)


def write_submission(path: str | Path, ids: Sequence[str], probs) -> Path:
    return write_text(path, submission_csv(ids, np.asarray(probs).argmax(1)))


def write_probs(path: str | Path, ids: Sequence[str], probs, class_names: Sequence[str]) -> Path:
    return write_text(path, probs_csv(ids, probs, class_names))


def prediction_rows(ids: Sequence[str], probs, classes: Sequence[str], chars: Sequence[str] | None) -> list[dict]:
    """One dict per input: `id`, `class` (index), `name`, `char` (None for datasets without characters) and
    `prob`, rounded to 6 digits as in the probability CSV."""
    p = np.asarray(probs)
    return [{"id": i, "class": c, "name": classes[c], "char": chars[c] if chars else None,
             "prob": round(float(row[c]), 6)} for i, row, c in zip(ids, p, p.argmax(1).tolist())]


TABLE_COLUMNS = ("Id", "class", "char", "name", "prob", "2nd")


def table_rows(ids: Sequence[str], probs, classes: Sequence[str], chars: Sequence[str] | None,
               limit: int = 40) -> list[tuple[str, ...]]:
    """The prediction table's cells (Id, class, char, name, prob, 2nd), at most `limit` inputs and then a row
    saying how many more there are."""
    p = np.asarray(probs)
    top2 = np.argsort(-p, axis=1, kind="stable")[:, :2]
    rows = []
    for i, (rid, idx) in enumerate(zip(ids, top2.tolist())):
        if i == limit:
            rows.append((f"... {len(ids) - limit:,} more (use --out)", "", "", "", "", ""))
            break
        second = f"{classes[idx[1]]} {p[i, idx[1]]:.1%}" if len(idx) > 1 else ""
        rows.append((rid, str(idx[0]), chars[idx[0]] if chars else "", classes[idx[0]], f"{p[i, idx[0]]:.1%}", second))
    return rows


def used(runs: Sequence[str], tta: bool, n: int, beta: float, method: str, seed: int,
         model_file: str | None = None) -> dict:
    """What a prediction used, for `--json` and the table title: the runs (and the ONNX file holding them),
    TTA on or off with its passes and clean-pass weight, how several runs were combined, and the seed that
    draws TTA's augmentations and breaks vote ties."""
    return {"runs": list(runs), "model_file": model_file, "tta": tta, "tta_n": n if tta else None,
            "tta_beta": beta if tta else None, "method": method, "seed": seed}


def describe(u: dict) -> str:
    """`used` in words: `2 runs (a, b; mean), TTA 4 passes, clean-pass weight 0.75, seed 42`."""
    runs = u["runs"]
    what = f"{len(runs)} run{'s' if len(runs) > 1 else ''} ({', '.join(runs)}"
    what += f"; {u['method']})" if len(runs) > 1 else ")"
    if u["model_file"]:
        what += f" in {u['model_file']}"
    tta = f"TTA {u['tta_n']} passes, clean-pass weight {u['tta_beta']:g}" if u["tta"] else "no TTA"
    return f"{what}, {tta}, seed {u['seed']}"


def image_seed(seed: int, pass_no: int, pixels: bytes) -> int:
    """The seed of one image's augmentations in one TTA pass: from the TTA seed, the pass and the image's pixels,
    never from its place in a batch, so an image's TTA result is the same alone or among others (torch and ONNX
    runtimes alike). 32 bits: numpy's limit."""
    h = hashlib.blake2b(f"{seed}:{pass_no}:".encode(), digest_size=4)
    h.update(pixels)
    return int.from_bytes(h.digest(), "little")


def printable(text: str) -> str:
    """`text` with control characters written as escapes: file names and an ONNX file's class names are printed
    by the torch-free runtime without rich, and must not drive the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
