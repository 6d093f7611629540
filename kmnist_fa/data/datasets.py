"""The MNIST family on disk: named datasets, folder datasets, verification, download.

A dataset is four files (train/test images/labels, test labels optional) plus an
optional classmap CSV. Named datasets (`kmnist`, `fashion`, `mnist`, `k49`) know
their official file names, MD5s and mirrors; any other folder of MNIST-format files
is a dataset too. Everything is loaded into memory as uint8 arrays: the largest
member (K49, 270k images) is 200 MB, and in-memory indexing is what keeps the
DataLoader from ever being the bottleneck.
"""
from __future__ import annotations

import base64
import csv
import hashlib
import http.client
import os
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ..core.atomic import atomic_path
from ..core.errors import DataError
from ..core.files import open_input, open_regular
from ..core.formats import read_array, read_idx, read_npz
from ..core.labels import class_label
from ..core.secrets import redact

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IMAGE_SIZE = 28

# Hiragana -> romaji (Hepburn) for every class of KMNIST and K49, so plots and
# tables can show "お o" for any classmap that lists the characters.
ROMAJI = dict(zip(
    "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわゐゑをんゝ",
    "a i u e o ka ki ku ke ko sa shi su se so ta chi tsu te to na ni nu ne no ha hi fu he ho "
    "ma mi mu me mo ya yu yo ra ri ru re ro wa wi we wo n odoriji".split(),
))


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a published dataset before any file is read."""

    name: str
    title: str
    files: dict[str, str]  # role -> official file name
    md5: dict[str, tuple[str, ...]]  # file name -> accepted MD5s (official, trusted repacks)
    mirrors: tuple[str, ...]
    classes: tuple[str, ...]
    chars: tuple[str, ...] | None = None
    classmap: str | None = None  # optional CSV published beside the data
    system_dirs: tuple[str, ...] = ()  # read-only copies installed by an OS package
    licence: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # role -> published number of images or labels

    def check_published(self, arr: np.ndarray, role: str, path: Path) -> None:
        """Hold an unpinned file (no published MD5) to what is published about it: its count, and labels
        within the classes. Format alone let a well-formed fake (100 images labelled 0..48) pass as K49."""
        want = self.counts.get(role)
        if want is not None and len(arr) != want:
            raise DataError(f"{path}: {len(arr):,} {role.split('_')[1]} where the published {self.name} file has "
                            f"{want:,}")
        if role.endswith("labels") and len(arr) and (arr.min() < 0 or arr.max() >= len(self.classes)):
            raise DataError(f"{path}: labels {int(arr.min())}..{int(arr.max())}, outside the published {self.name} "
                            f"classes 0..{len(self.classes) - 1}")

    def urls(self, filename: str, mirror: str | None = None) -> list[str]:
        bases = [mirror] if mirror else list(self.mirrors)
        return [b.rstrip("/") + "/" + filename for b in bases]


_IDX = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_KMNIST_CHARS = tuple("おきすつなはまやれを")
_MNIST_COUNTS = {"train_images": 60_000, "train_labels": 60_000, "test_images": 10_000, "test_labels": 10_000}
_K49_CHARS = tuple(ROMAJI)

DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec(
            "kmnist", "Kuzushiji-MNIST", _IDX,
            {
                "train-images-idx3-ubyte.gz": ("bdb82020997e1d708af4cf47b453dcf7",),
                "train-labels-idx1-ubyte.gz": ("e144d726b3acfaa3e44228e80efcd344",),
                "t10k-images-idx3-ubyte.gz": ("5c965bf0a639b31b8f53240b1b52f4d7",),
                "t10k-labels-idx1-ubyte.gz": ("7320c461ea6c1c855c0b718fb2a4b134",),
            },
            ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
            tuple(ROMAJI[c] for c in _KMNIST_CHARS), _KMNIST_CHARS, classmap="kmnist_classmap.csv",
            licence='CC BY-SA 4.0: "KMNIST Dataset" (created by CODH), adapted from "Kuzushiji Dataset" '
            "(created by NIJL and others), doi:10.20676/00000341", counts=_MNIST_COUNTS,
        ),
        DatasetSpec(
            "fashion", "Fashion-MNIST", _IDX,
            {
                # official files, then Debian's dataset-fashion-mnist (same images, re-gzipped)
                "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "cf8536b0aa1a6ac5fa3f23001093305c"),
                "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe", "10bea18fdb374794d4bb42e356e600c9"),
                "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79", "f78720b4224f21cce2f2ccf2d7a94c9a"),
                "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310", "0d30e22e447f3c33dab9ed536400ac01"),
            },
            ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
            ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
            system_dirs=("/usr/share/datasets/fashion-mnist",),
            licence="MIT (Zalando Research)", counts=_MNIST_COUNTS,
        ),
        DatasetSpec(
            "mnist", "MNIST", _IDX,
            {
                "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873",),
                "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432",),
                "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
                "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
            },
            ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
            tuple(str(i) for i in range(10)),
            licence="CC BY-SA 3.0 (Yann LeCun and Corinna Cortes)", counts=_MNIST_COUNTS,
        ),
        DatasetSpec(
            # The K49 MD5s are not published with the files; they are left unpinned rather
            # than invented, and the published counts (CODH's README) and the 49 classes are
            # enforced instead.
            "k49", "Kuzushiji-49",
            {
                "train_images": "k49-train-imgs.npz",
                "train_labels": "k49-train-labels.npz",
                "test_images": "k49-test-imgs.npz",
                "test_labels": "k49-test-labels.npz",
            },
            {},
            ("http://codh.rois.ac.jp/kmnist/dataset/k49/",),
            tuple(ROMAJI[c] for c in _K49_CHARS), _K49_CHARS, classmap="k49_classmap.csv",
            licence='CC BY-SA 4.0: "KMNIST Dataset" (created by CODH), adapted from "Kuzushiji Dataset" '
            "(created by NIJL and others), doi:10.20676/00000341",
            counts={"train_images": 232_365, "train_labels": 232_365, "test_images": 38_547, "test_labels": 38_547},
        ),
    ]
}
DEFAULT_DATASET = "kmnist"

# Names tried in a folder that is not a named dataset, most specific first.
_PATTERNS = {
    "train_images": ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte", "train-images.idx3-ubyte",
                     "*-train-imgs.npz", "*train*images*idx3*"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte", "train-labels.idx1-ubyte",
                     "*-train-labels.npz", "*train*labels*idx1*"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte",
                    "*-test-imgs.npz", "*t10k*images*idx3*", "*test*images*idx3*"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte",
                    "*-test-labels.npz", "*t10k*labels*idx1*", "*test*labels*idx1*"),
}


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open_input(path, DataError) as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fastai_data_dir() -> Path:
    """fastai's data folder (`fastai.data.external.fastai_path("data")`: ~/.fastai/data unless FASTAI_HOME or
    its config.ini say otherwise), read with fastcore's `Config` as fastai does, so that finding a dataset
    loads neither fastai nor torch."""
    try:  # here, not at the top: the torch-free runtime reads images without fastcore
        from fastcore.xtras import Config
    except ImportError:  # there, fastai's default place
        return Path(os.getenv("FASTAI_HOME", "~/.fastai")).expanduser() / "data"
    cfg = Config(Path(os.getenv("FASTAI_HOME", "~/.fastai")), "config.ini",
                 create=dict(data="data", archive="archive", storage="tmp", model="models"))
    return Path(cfg.path("data"))


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"--dataset: unknown dataset {name!r} (known: {', '.join(DATASETS)})") from None


def _find(root: Path, role: str, spec: DatasetSpec | None) -> Path | None:
    patterns = ((spec.files[role],) if spec else ()) + _PATTERNS[role]
    for pat in patterns:
        hits = sorted(p for p in root.glob(pat) if p.is_file() and not p.name.endswith((".part", ".tmp")))
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise DataError(f"{root}: several files could be the {role.replace('_', ' ')}: "
                            f"{', '.join(h.name for h in hits)}; keep one")
    return None


def read_classmap(path: Path) -> list[str]:
    """Characters (or names) by class index from a KMNIST-style `index,codepoint,char` CSV."""
    try:
        if path.stat().st_size > 1 << 20:
            raise DataError(f"{path}: classmap larger than 1 MiB; expected one short row per class")
        with open_regular(path, "r", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot read classmap ({type(e).__name__}: {str(e)[:100]})") from None
    if not rows or "index" not in rows[0]:
        raise DataError(f"{path}: classmap needs an 'index' column and one row per class")
    col = "char" if "char" in rows[0] else next((c for c in rows[0] if c != "index"), None)
    if col is None:
        raise DataError(f"{path}: classmap needs a column of names (e.g. 'char') beside 'index'")
    try:
        pairs = sorted((int(r["index"]), r[col] or "") for r in rows)
    except (TypeError, ValueError):
        raise DataError(f"{path}: classmap 'index' column must hold integers") from None
    if [i for i, _ in pairs] != list(range(len(pairs))):
        raise DataError(f"{path}: classmap indices must be 0..{len(pairs) - 1} with no gaps")
    names = [c for _, c in pairs]
    if not all(0 < len(c) <= 100 for c in names) or len(set(names)) != len(names):
        raise DataError(f"{path}: classmap '{col}' names must be distinct and 1-100 characters long")
    return names


@dataclass
class MnistData:
    """One loaded dataset: uint8 images, int64 labels, class names and file provenance."""

    name: str
    root: Path
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray | None
    test_y: np.ndarray | None
    classes: list[str]
    chars: list[str] | None = None
    files: dict[str, dict] = field(default_factory=dict)  # role -> {path, md5, status}
    named: bool = False

    @property
    def c(self) -> int:
        return len(self.classes)

    @property
    def has_test_labels(self) -> bool:
        return self.test_y is not None

    def label(self, i: int) -> str:
        """Display name of class `i`: "お o" when the characters are known."""
        return class_label(self.classes[i], self.chars[i] if self.chars else None)

    @cached_property
    def fingerprint(self) -> str:
        """MD5 over the training files' MD5s: tells whether two runs saw the same data."""
        return hashlib.md5("".join(self.files[r]["md5"] for r in ("train_images", "train_labels")).encode()).hexdigest()

    def provenance(self) -> dict:
        return {"name": self.name, "root": str(self.root), "named": self.named, "fingerprint": self.fingerprint,
                "files": {r: {"name": Path(f["path"]).name, "md5": f["md5"], "status": f["status"]}
                          for r, f in self.files.items()}}


def _check_pair(x: np.ndarray, y: np.ndarray | None, xp: Path, yp: Path | None) -> None:
    if x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{xp}: images are {x.shape[1]}x{x.shape[2]}, kmnist-fa expects {IMAGE_SIZE}x{IMAGE_SIZE}")
    if y is not None and len(x) != len(y):
        raise DataError(f"{yp}: {len(y):,} labels for {len(x):,} images in {xp.name}")


def resolve_root(dataset: str | None = None, data: str | Path | None = None) -> tuple[DatasetSpec | None, Path]:
    """Where the files are: `--data DIR` > env `KMNIST_FA_DATA` > fastai's data folder.

    `--data` alone means "this folder is a dataset" (MD5s are reported, not
    enforced, so re-splits like kmnist-10k work); `--dataset NAME` means the
    published files, whose MD5s must match.
    """
    spec = get_spec(dataset) if dataset else None
    if data is None and os.environ.get("KMNIST_FA_DATA") and spec is None:
        data = os.environ["KMNIST_FA_DATA"]
    if data is not None:
        root = Path(data).expanduser().resolve()
        if not root.is_dir():
            raise DataError(f"--data: {root} is not a folder")
        return spec, root
    spec = spec or get_spec(DEFAULT_DATASET)
    root = fastai_data_dir() / spec.name
    if not (root.is_dir() and _find(root, "train_images", spec)):
        for sysdir in spec.system_dirs:
            if Path(sysdir, spec.files["train_images"]).exists():
                return spec, Path(sysdir)
    return spec, root


def _recognise(found: dict[str, Path], md5s: dict[str, str]) -> DatasetSpec | None:
    """The named dataset whose official training files these are, if any."""
    for spec in DATASETS.values():
        if all(md5s.get(r) in spec.md5.get(spec.files[r], ()) for r in ("train_images", "train_labels")):
            return spec
    return None


def load_dataset(dataset: str | None = None, data: str | Path | None = None) -> MnistData:
    spec, root = resolve_root(dataset, data)
    if not root.is_dir():
        raise DataError(f"{spec.name}: no data in {root}; run `kmnist-fa data download {spec.name}` "
                        f"or pass --data DIR (a folder of MNIST-format files)")
    found = {role: _find(root, role, spec) for role in ROLES}
    for role in ("train_images", "train_labels", "test_images"):
        if found[role] is None:
            hint = f"; run `kmnist-fa data download {spec.name}`" if spec else ""
            raise DataError(f"{root}: no {role.replace('_', ' ')} file found "
                            f"(looked for {', '.join(_PATTERNS[role][:2])}, ...){hint}")
    md5s = {role: md5sum(p) for role, p in found.items() if p is not None}
    files = {}
    for role, p in found.items():
        if p is None:
            continue
        accepted = spec.md5.get(p.name, ()) if spec else ()
        if spec and accepted and md5s[role] not in accepted:
            raise DataError(f"{p}: MD5 {md5s[role]} does not match the published {spec.name} file "
                            f"(expected {accepted[0]}); delete it and run `kmnist-fa data download {spec.name}`, "
                            f"or use --data {root} to treat the folder as a custom dataset")
        status = "verified" if md5s[role] in accepted else ("checked" if spec else "custom")
        files[role] = {"path": str(p), "md5": md5s[role], "status": status}
    named = spec is not None
    if spec is None and (spec := _recognise(found, md5s)):
        for f in files.values():
            f["status"] = "verified" if f["md5"] in sum(spec.md5.values(), ()) else "custom"
        named = all(f["status"] == "verified" for f in files.values())

    train_x = read_array(found["train_images"], 3)
    train_y = read_array(found["train_labels"], 1).astype(np.int64)
    test_x = read_array(found["test_images"], 3)
    test_y = read_array(found["test_labels"], 1).astype(np.int64) if found["test_labels"] else None
    if len(train_x) == 0:
        raise DataError(f"{found['train_images']}: holds no images; nothing to train on or to name classes from")
    _check_pair(train_x, train_y, found["train_images"], found["train_labels"])
    _check_pair(test_x, test_y, found["test_images"], found["test_labels"])
    arrays = {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}
    for role, f in files.items():
        if f["status"] == "checked":
            try:
                spec.check_published(arrays[role], role, found[role])
            except DataError as e:
                raise DataError(f"{e}; delete it and run `kmnist-fa data download {spec.name}`, or use --data {root} "
                                "to treat the folder as a custom dataset") from None

    classes, chars = _class_names(root, spec, train_y, test_y)
    for role, y in (("train_labels", train_y), ("test_labels", test_y)):
        if y is not None and len(y) and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{found[role]}: label {int(y.max())} outside the {len(classes)} classes 0..{len(classes) - 1}")
    name = spec.name if named else root.name
    return MnistData(name, root, train_x, train_y, test_x, test_y, classes, chars, files, named)


def _class_names(root: Path, spec: DatasetSpec | None, *labels) -> tuple[list[str], list[str] | None]:
    cmap = next(iter(sorted(root.glob("*classmap*.csv"))), None)
    if cmap is not None:
        names = read_classmap(cmap)
        if all(n in ROMAJI for n in names):
            return [ROMAJI[n] for n in names], names
        return names, None
    if spec is not None:
        return list(spec.classes), list(spec.chars) if spec.chars else None
    n = max(int(y.max()) + 1 for y in labels if y is not None and len(y))
    return [str(i) for i in range(n)], None


# --------------------------------------------------------------------------- download

def _request(url: str, headers: dict[str, str]) -> urllib.request.Request:
    """A request for `url`. A user and password in it (a private mirror) go in a Basic Authorization
    header that is not passed on to a redirect's host: left in the URL, urllib takes them for part of the
    host name and repeats them in its errors."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url, headers=headers)
    req = urllib.request.Request(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(), headers=headers)
    login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    req.add_unredirected_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    return req


def _fetch(url: str, dest: Path, spec: DatasetSpec, progress: Callable[[int, int | None], None] | None) -> None:
    """Fetch `url` into `dest` through `dest.part`, resuming a partial file with a Range request.

    Nothing reaches `dest` unverified: by MD5 where one is published, else by reading
    it as what it should be (`_check_content`). A transfer that stops short keeps its
    `.part` for the next run to resume; a complete but wrong file is removed.
    """
    md5 = spec.md5.get(dest.name, ())
    shown = redact(url)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = _request(url, {"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        if have and resp.status != 206:  # server ignored Range: start over
            have = 0
        total = resp.length + have if resp.length is not None else None
        with open(part, "ab" if have else "wb") as f:
            if progress:
                progress(have, total)
            while block := resp.read(1 << 16):
                f.write(block)
                have += len(block)
                if progress:
                    progress(have, total)
    if total is not None and have < total:
        raise DataError(f"{shown}: the transfer stopped at {have:,} of {total:,} bytes; run the download again to "
                        f"resume it (kept {part.name})")
    got = md5sum(part)
    if md5 and got not in md5:
        part.unlink()
        raise DataError(f"{shown}: downloaded file has MD5 {got}, expected {md5[0]}; removed it, try again")
    if not md5:
        try:
            _check_content(part, dest.name, spec)
        except DataError as e:
            part.unlink()
            raise DataError(f"{shown}: not a valid {dest.name} ({str(e).split(': ', 1)[-1]}); removed it") from None
    with atomic_path(dest) as tmp:
        os.replace(part, tmp)


def _check_content(path: Path, name: str, spec: DatasetSpec) -> None:
    """`path` read as the file `name` of `spec` must be: a classmap, or 28x28 images / labels in idx or npz,
    as many as published (`DatasetSpec.check_published`)."""
    if name.endswith(".csv"):
        read_classmap(path)
        return
    images = "imgs" in name or "images" in name
    arr = read_npz(path) if name.endswith(".npz") else read_idx(path, 3 if images else 1)
    want = 3 if images else 1
    if arr.ndim != want or (images and arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE)) or len(arr) == 0:
        raise DataError(f"{path}: array of shape {arr.shape} is not a set of {'28x28 images' if images else 'labels'}")
    role = next((r for r, f in spec.files.items() if f == name), None)
    if role is not None:
        spec.check_published(arr, role, path)


def _valid_file(path: Path, spec: DatasetSpec) -> bool:
    if md5 := spec.md5.get(path.name, ()):
        return md5sum(path) in md5
    try:
        _check_content(path, path.name, spec)
        return True
    except DataError:
        return False


def download(name: str = DEFAULT_DATASET, data: str | Path | None = None, mirror: str | None = None,
             progress: Callable[[str, int, int | None], None] | None = None) -> Path:
    """Download and verify a named dataset; files already present and valid are kept."""
    spec = get_spec(name)
    root = Path(data).expanduser() if data else fastai_data_dir() / spec.name
    root.mkdir(parents=True, exist_ok=True)
    wanted = list(spec.files.values()) + ([spec.classmap] if spec.classmap else [])
    for fname in wanted:
        dest = root / fname
        if dest.exists() and _valid_file(dest, spec):
            continue
        errors = []
        for url in spec.urls(fname, mirror):
            try:
                _fetch(url, dest, spec, (lambda d, t, f=fname: progress(f, d, t)) if progress else None)
                break
            # URLError and timeouts are OSErrors; a server that answers garbage raises an HTTPException, a
            # malformed URL (a port that is not a number) a ValueError
            except (OSError, http.client.HTTPException, ValueError) as e:
                errors.append(redact(f"{url} ({' '.join(str(getattr(e, 'reason', e)).split()) or type(e).__name__})"))
        else:
            raise DataError(f"cannot download {fname}: {'; '.join(errors)}. Offline? Put the files "
                            f"{', '.join(wanted)} in {root} (or pass --data DIR)")
    return root
