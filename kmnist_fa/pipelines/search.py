"""The one search engine behind `sweep` and `tune`: Optuna studies whose trials are ordinary runs.

A study lives in an Optuna storage -- by default a journal file in the study's
folder (`models/<study>/study.journal`) -- so re-running the same command
continues it, and any number of worker processes join it by opening the same
storage: `--jobs N` on this machine, or the same command with an RDB URL
(PostgreSQL, MySQL) or a gRPC storage proxy on other machines. A trial trains one
run per fold in the study folder; its value is the mean best validation accuracy
over its folds, and a pruner may stop it after any epoch of its first fold.

A trial whose worker died (killed, Ctrl-C, lost machine) is failed and
re-enqueued with the same parameters -- by this module for workers on this
machine, by Optuna's heartbeat for RDB storages -- and the retry resumes the dead
attempt's run folders from their last epoch, because folders are named after the
original trial.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import socket
import statistics
import tempfile
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import runs
from ..config.options import OPTIONS, SWEEPABLE, TrainConfig, recipe_values
from ..core.atomic import make_folder, write_csv, write_text
from ..core.errors import KmnistError, OptionError
from ..core.files import check_input
from ..core.interrupts import Terminated
from ..core.secrets import one_line, redact

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
STORAGE_FILE = "study.journal"
CLAIM_LOCK = "claim.lock"
HOST = socket.gethostname()


@dataclass(frozen=True)
class Param:
    """One searched option: a list of choices, or a uniform / log-uniform range (int or float)."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if OPTIONS[self.name].type is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def __str__(self) -> str:
        if self.choices is not None:
            return f"{self.name}=" + ",".join(str(c) for c in self.choices)
        return f"{self.name}={self.low}:{self.high}" + (":log" if self.log else "")


def parse_param(spec: str, ranges: bool = True) -> Param:
    """'lr=1e-4:1e-2:log' / 'wd=0:0.1' / 'aug=light,heavy' -> a Param, typed and range-checked like the option."""
    if "=" not in spec:
        raise OptionError(f"--param {spec[:80]!r}: expected NAME=V1,V2,... or NAME=LOW:HIGH[:log] "
                          "(e.g. lr=1e-4:1e-2:log)")
    name, vals = spec.split("=", 1)
    name = name.strip().replace("-", "_")
    if name not in SWEEPABLE:
        raise OptionError(f"--param {name[:40]}: not sweepable (choose from {', '.join(SWEEPABLE)})")
    opt = OPTIONS[name]
    if ":" in vals:
        if not ranges:
            raise OptionError(f"--param {name}: sweep takes lists (V1,V2,...); ranges need `kmnist-fa tune`")
        parts = [p.strip() for p in vals.split(":")]
        log = len(parts) == 3 and parts[2] == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise OptionError(f"--param {name}: a range is LOW:HIGH or LOW:HIGH:log, got {vals[:80]!r}")
        if opt.type not in (int, float):
            raise OptionError(f"--param {name}: a range needs a numeric option; give choices V1,V2,...")
        low, high = opt.parse(parts[0]), opt.parse(parts[1])
        if not low < high:
            raise OptionError(f"--param {name}: LOW must be below HIGH, got {low} and {high}")
        if log and low <= 0:
            raise OptionError(f"--param {name}: a log range needs LOW > 0, got {low}")
        return Param(name, low=low, high=high, log=log)
    texts = [v.strip() for v in vals.split(",")]
    if any(v == "" for v in texts):
        raise OptionError(f"--param {name}: no values")
    return Param(name, choices=tuple(dict.fromkeys(opt.parse(v) for v in texts)))


@dataclass
class StudySpec:
    """Everything a worker process needs to work on a study (picklable for spawned workers)."""

    root: str  # the study folder: run folders, lock, default storage
    study: str
    base: dict  # TrainConfig.to_dict() of the fixed options
    params: list[Param]
    folds: list  # fold numbers, or [None] for the holdout
    kind: str = "tune"  # tune: members named after trials; sweep: after their values
    budget: int | None = None  # trials to finish; None: only the enqueued ones
    storage: str | None = None
    sampler: str = "tpe"
    pruner: str = "none"
    seed: int = 0
    epochs: int = 1
    identity: dict = field(default_factory=dict)  # what must match when the study is continued
    track: list = field(default_factory=list)  # experiment trackers for every member (`tracking`)
    tracking_parent: str | None = None  # the study's MLflow parent run


def storage_url(spec: StudySpec) -> str:
    return spec.storage or str(Path(spec.root) / STORAGE_FILE)


def _journal(url: str):
    """A journal file; only a path ending in .journal is taken for one, so that a mistyped URL
    (`--storage notaurl`, `postgres:/host`) is refused instead of silently becoming a file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not url.endswith(".journal"):
        raise OptionError(f"--storage {redact(url)}: neither a storage URL (postgresql://..., mysql://..., "
                          "sqlite:///FILE, grpc://HOST:PORT) nor a journal file (a path ending in .journal)")
    if os.path.lexists(url):
        check_input(url, OptionError)  # a FIFO would hang optuna's reader, a folder fail deep inside it
    make_folder(Path(url).parent)
    try:
        return JournalStorage(JournalFileBackend(url))
    except OSError as e:
        raise OptionError(f"--storage {url}: cannot open the journal ({e.strerror or type(e).__name__})") from None


def _grpc(url: str):
    """Optuna's gRPC storage proxy at grpc://HOST:PORT. It has no logins: a user or password in the URL would
    only be sent on as part of the host name, into grpc's errors."""
    import optuna

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.username is not None or parts.password is not None or not parts.hostname or port is None:
        raise OptionError(f"--storage {redact(url)}: a gRPC storage is grpc://HOST:PORT (no user or password)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # urlsplit drops IPv6's brackets
    return optuna.storages.GrpcStorageProxy(host=host, port=port)


def _storage(spec: StudySpec):
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    url = storage_url(spec)
    if "://" not in url:
        return _journal(url)
    if url.startswith("grpc://"):
        return _grpc(url)
    try:  # an RDB: heartbeats let workers on other machines fail and retry a dead worker's trial
        return RDBStorage(url, heartbeat_interval=60, grace_period=180,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                              inherit_intermediate_values=True))
    except Exception as e:  # sqlalchemy's errors for bad URLs, missing drivers, unreachable servers
        raise OptionError(f"--storage {redact(url)}: cannot open ({_client_message(e)})") from None


def _client_errors() -> tuple[type[BaseException], ...]:
    """What the storages' clients raise for a server that cannot be reached or refuses the login."""
    import sqlalchemy.exc

    errors: list[type[BaseException]] = [sqlalchemy.exc.SQLAlchemyError]
    with contextlib.suppress(ImportError):  # grpcio comes with Optuna's optional gRPC support
        import grpc

        errors.append(grpc.RpcError)
    return tuple(errors)


def _client_message(e: BaseException) -> str:
    """A storage client's error on one line, redacted: grpc's repeats the target and SQLAlchemy's the URL."""
    if callable(getattr(e, "details", None)) and e.details():  # grpc: the status, without its debug dump
        return redact(f"{e.code().name}: {' '.join(e.details().split())}")[:300]
    return one_line(e).split(" (Background on")[0]  # SQLAlchemy's link to its documentation


def _sampler(spec: StudySpec, trial: int = 0):
    """TPE or random, seeded from the study's seed and the trial's number: workers that join a study together
    draw differently (one seed for all drew the same first parameters in each), and a one-worker study
    draws the same again from the same seed. A grid is enqueued up front instead (`enqueue_grid`), so its
    sampler is never asked."""
    import random

    import optuna

    seed = random.Random(f"{spec.seed}/{trial}").getrandbits(32)
    if spec.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def enqueue_grid(study, spec: StudySpec, budget: int) -> int:
    """Queue grid points (in a seeded random order, as Optuna's GridSampler visits them) until the study
    holds `budget` trials; returns how many were added. Optuna's GridSampler stops the study from inside
    `optimize`, which does not fit workers that claim trials themselves."""
    import random

    ranged = [p.name for p in spec.params if p.choices is None]
    if ranged:
        raise OptionError(f"--sampler grid: needs choices (V1,V2,...), not ranges, for {', '.join(ranged)}")
    points = [dict(zip([p.name for p in spec.params], vs)) for vs in itertools.product(*(p.choices for p in spec.params))]
    random.Random(spec.seed).shuffle(points)
    trials = study.get_trials(deepcopy=False)
    seen = {config_id(t.params or t.system_attrs.get("fixed_params", {})) for t in trials}
    room = budget - len({original(t) for t in trials})
    added = 0
    for point in points:
        if added >= room:
            break
        if config_id(point) not in seen:
            study.enqueue_trial(point)
            added += 1
    return added


def _pruner(spec: StudySpec):
    """Median: after a few trials, stop one whose first-fold accuracy is below the median of earlier
    trials at the same epoch; not in the first quarter of epochs, where one-cycle's warm-up makes
    every trial look alike. Hyperband: successive halving over epochs."""
    import optuna

    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=max(1, spec.epochs // 4))
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(spec.epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(spec: StudySpec):
    """Create or continue the study; refuse to continue one started with other fixed options."""
    import optuna

    if spec.sampler not in SAMPLERS:
        raise OptionError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {spec.sampler!r}")
    if spec.pruner not in PRUNERS:
        raise OptionError(f"--pruner must be one of {', '.join(PRUNERS)}, got {spec.pruner!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    storage = _storage(spec)
    try:  # reads the whole study, so damage shows here rather than midway through a run
        study = optuna.create_study(study_name=spec.study, storage=storage, sampler=_sampler(spec),
                                    pruner=_pruner(spec), direction="maximize", load_if_exists=True)
        stored = study.user_attrs.get("identity")
        study.get_trials(deepcopy=False)
        if stored is None:  # a new study: a write, which is where a cut-off last record shows
            for k, v in spec.identity.items():
                study.set_user_attr(k, v)
            study.set_user_attr("identity", spec.identity)
    except (ValueError, KeyError, TypeError, AssertionError) as e:  # Optuna asserts on records it does not know
        raise OptionError(f"{redact(storage_url(spec))}: the study's storage is damaged ({type(e).__name__}); "
                          "move it aside to start the study again (finished runs stay in their folders)") from None
    except _client_errors() as e:  # a gRPC proxy is first reached here
        raise OptionError(f"--storage {redact(storage_url(spec))}: cannot reach the storage "
                          f"({_client_message(e)})") from None
    if stored is not None and stored != spec.identity:
        diff = [k for k in set(stored) | set(spec.identity) if stored.get(k) != spec.identity.get(k)]
        raise OptionError(f"study {spec.study!r} in {redact(storage_url(spec))} was started with other "
                          f"{', '.join(sorted(diff))}; repeat its options, or give another --study/--name")
    _STORAGES[study] = storage
    return study


_STORAGES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # study -> its storage (private in Optuna)


@contextlib.contextmanager
def _heartbeat(study, trial) -> Iterator[None]:
    """Beat for a trial while it trains, where the storage supports it (RDB): Optuna only does this
    inside `study.optimize`, and workers here claim trials themselves."""
    import threading

    storage = _STORAGES.get(study)
    interval = getattr(storage, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                               trial.number)
    stop = threading.Event()

    def beat():
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    t = threading.Thread(target=beat, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


@contextlib.contextmanager
def claim_lock(root: str) -> Iterator[None]:
    """Serialise claiming trials among this machine's workers, so the budget is never overshot."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    Path(root).mkdir(parents=True, exist_ok=True)
    with open(Path(root) / CLAIM_LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def original(trial) -> int:
    """The number of the trial a retry repeats (itself when it is not a retry); takes a FrozenTrial."""
    return trial.system_attrs.get("failed_trial", trial.number)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _retry(study, trial) -> None:
    """Fail a trial whose worker is gone and enqueue it again with the same parameters."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    if study.get_trials(deepcopy=False)[trial.number].state != TrialState.RUNNING:
        return  # it ended (told) before the worker went
    study.tell(trial.number, state=TrialState.FAIL)
    RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)(study, study.get_trials()[trial.number])


def _recover_dead(study) -> int:
    """Retry the running trials of workers on this machine that no longer exist."""
    from optuna.trial import TrialState

    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if (w := t.user_attrs.get("worker")) and w.get("host") == HOST and not _alive(int(w.get("pid", 0)))]
    for t in dead:
        _retry(study, t)
    return len(dead)


def claim(study, spec: StudySpec):
    """The next trial for this worker (an enqueued one first), or None when the budget is used up.

    The budget counts original trials: a retry replaces its failed attempt, it does not add one.
    """
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    with claim_lock(spec.root):
        fail_stale_trials(study)  # workers elsewhere whose heartbeat stopped (RDB storages)
        _recover_dead(study)
        trials = study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in trials):
            if spec.budget is None or len({original(t) for t in trials}) >= spec.budget:
                return None
        trial = study.ask()
        study.sampler = _sampler(spec, trial.number)  # samplers draw at `suggest`, after the number is known
        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid()})
        return trial


def member_stem(spec: StudySpec, trial_number: int, params: dict) -> str:
    if spec.kind == "sweep":
        return config_id(params)
    return f"trial{trial_number:03d}"


def config_id(values: dict) -> str:
    return "_".join(f"{k}-{v}" for k, v in values.items()).replace("/", "-")


def fold_list(n_folds: int | None, folds: str | None) -> list:
    """`--n-folds K --folds 0,2` -> [0, 2]; all K folds by default; [None] (the holdout) without --n-folds."""
    if not n_folds:
        if folds is not None:
            raise OptionError("--folds needs --n-folds")
        return [None]
    if folds in (None, "all"):
        return list(range(n_folds))
    try:
        out = sorted({int(f) for f in folds.split(",")})
    except ValueError:
        raise OptionError(f"--folds must be 'all' or a list like 0,1; got {folds[:80]!r}") from None
    if any(not 0 <= f < n_folds for f in out):
        raise OptionError(f"--folds must be within 0..{n_folds - 1}, got {folds[:80]!r}")
    return out


def member_name(stem: str, fold) -> str:
    return f"{stem}-{'holdout' if fold is None else f'f{fold}'}"


def member_status(path: Path) -> str:
    """complete, resumable, new, or 'unreadable: why' for a member folder."""
    if not (path / runs.RUN_FILE).exists():
        leftovers = path.exists() and any(not p.name.endswith(".tmp") for p in path.iterdir())
        return "unreadable: a folder without run.json is in the way" if leftovers else "new"
    try:
        rec = runs.RunRecord.read(path)
    except KmnistError as e:
        return f"unreadable: {e}"
    return "complete" if rec.complete else "resumable"


def pruning_available() -> None:
    import importlib.util

    try:
        missing = importlib.util.find_spec("optuna_integration") is None
    except ValueError:  # already imported, as a lazy module without a spec: installed
        missing = False
    if missing:
        raise OptionError("--pruner needs optuna-integration: pip install 'kmnist-fa[tune]' (or --pruner none)")


def _pruning_callback(trial):
    """optuna-integration's fastai callback, reporting validation accuracy at the run's epoch (a
    fine-tuning run's second fit counts on from its first) and stopping the fit when the pruner says
    so, after that epoch's checkpoint is written (it runs after RunRecorder)."""
    from fastai.callback.core import CancelFitException
    from fastai.callback.tracker import TrackerCallback
    from optuna_integration import FastAIV2PruningCallback

    class RunPruning(FastAIV2PruningCallback):
        def after_epoch(self):
            TrackerCallback.after_epoch(self)
            self.trial.report(self.recorder.final_record[self.idx], step=getattr(self.learn, "run_epoch", self.epoch))
            if self.trial.should_prune():
                raise CancelFitException()

    return RunPruning(trial, monitor="accuracy")


def run_member(path: Path, cfg: TrainConfig, cbs: list | None) -> str:
    """Train, resume or skip one run; returns trained/resumed/skipped or 'unreadable: ...'."""
    from .training import resume, train  # start-up speed: sweep/tune options are checked before torch loads

    status = member_status(path)
    if status == "complete":
        return "skipped"
    if status.startswith("unreadable"):
        return status
    if status == "resumable":
        resume(path, quiet=True, cbs=cbs, log=lambda m: None)
        return "resumed"
    train(cfg, name=path.name, root=path.parent, quiet=True, cbs=cbs, log=lambda m: None)
    return "trained"


def run_trial(study, trial, spec: StudySpec, outcome: dict[str, str]) -> None:
    """Train every fold of one trial and tell the study how it ended (complete, pruned or failed)."""
    import optuna
    from optuna.trial import TrialState

    from ..train import tracking  # start-up speed, as in run_member

    params = {p.name: p.suggest(trial) for p in spec.params}
    n = original(study.get_trials(deepcopy=False)[trial.number])
    stem = member_stem(spec, n, params)
    base = TrainConfig.from_dict(spec.base)
    accs = []
    for i, fold in enumerate(spec.folds):
        path = Path(spec.root) / member_name(stem, fold)
        try:
            cfg = base.replace(**params, fold=fold, full=False)
            cfg.extra[spec.kind] = {"study": spec.study, "trial": n, "params": params} if spec.kind == "tune" \
                else Path(spec.root).name
            cbs = [_pruning_callback(trial)] if i == 0 and spec.pruner != "none" else []
            outcome[path.name] = run_member(path, cfg, cbs + tracking.callbacks(spec.track, spec.tracking_parent))
        except optuna.TrialPruned:
            outcome[path.name] = "pruned"
            study.tell(trial, state=TrialState.PRUNED)
            return
        except Exception as e:  # one broken trial must not stop the study: recorded and reported
            outcome[path.name] = f"failed: {one_line(e)}"  # a tracker's or storage's error may hold its URL
            trial.set_user_attr("error", outcome[path.name])
            study.tell(trial, state=TrialState.FAIL)
            return
        if outcome[path.name].startswith("unreadable"):
            trial.set_user_attr("error", outcome[path.name])
            study.tell(trial, state=TrialState.FAIL)
            return
        best = runs.RunRecord.read(path).best
        accs.append(best.accuracy if best and best.accuracy is not None else math.nan)
    trial.set_user_attr("fold_accs", accs)
    study.tell(trial, statistics.mean(accs))


def claim_device(n_gpu: int, slots: int, lock_dir: str | None = None):
    """A free (GPU, slot) for this worker, held until the process ends: workers spread over the GPUs
    whatever order they start in, even across concurrent sweeps and tunes. Returns (device, lock file)."""
    import fcntl

    lock_dir = Path(lock_dir or tempfile.gettempdir())
    for s, d in itertools.product(range(max(slots, 1)), range(n_gpu)):
        f = open(lock_dir / f"kmnist-fa-cuda{d}-slot{s}.lock", "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return d, f
        except BlockingIOError:
            f.close()
    return os.getpid() % n_gpu, None  # more workers than slots: share


def work(spec: StudySpec, threads: int | None = None, n_gpu: int = 0, slots: int = 1) -> dict[str, str]:
    """One worker: claim and run trials until the study's budget is used up; member -> outcome."""
    held = None
    if n_gpu > 1:
        device, held = claim_device(n_gpu, slots)
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    import torch

    if threads:
        torch.set_num_threads(threads)
    study = open_study(spec)
    outcome: dict[str, str] = {}
    try:
        while (trial := claim(study, spec)) is not None:
            try:
                with _heartbeat(study, trial):
                    run_trial(study, trial, spec, outcome)
            except BaseException:  # Ctrl-C or a kill signal turned exception: retried on the next run
                _retry(study, trial)
                raise
    finally:
        if held:
            held.close()
    return outcome


def watch_parent(parent: int, every: float = 1.0, grace: float = 10.0) -> None:
    """Stop this worker, as Ctrl-C would (its trial is retried on the next run), once its parent is gone.

    A sweep or tune killed by SIGTERM or SIGKILL, unlike Ctrl-C, signals no worker, and a
    worker claims trial after trial until the study is done: it would go on training, orphaned.
    The interrupt reaches Python code only: a worker blocked waiting for a task that the dead
    parent never sent would wait forever, so after `grace` seconds the process ends regardless.
    Runs in each pool worker's main thread (the pool's initializer).
    """
    import _thread
    import threading

    # interrupt_main raises KeyboardInterrupt only where Python handles SIGINT; a sweep started with SIGINT
    # ignored (a background job of a script, nohup, CI) hands that to its workers, so they take it back
    signal.signal(signal.SIGINT, signal.default_int_handler)

    def watch():
        while os.getppid() == parent:
            time.sleep(every)
        _thread.interrupt_main()
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()


def pool_work(parent: int, *args) -> dict[str, str]:
    """`work` in a pool process; orphaned, it exits instead of waiting for tasks a dead parent cannot send."""
    try:
        return work(*args)
    finally:
        if os.getppid() != parent:
            os._exit(1)


def run_workers(spec: StudySpec, jobs: int = 1, threads: int | None = None) -> dict[str, str]:
    """`jobs` workers on the study: this process alone, or spawned processes with a share of the CPU each."""
    import torch

    n_gpu = torch.cuda.device_count() if not spec.base.get("cpu") else 0
    if jobs <= 1:
        return work(spec, threads)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    outcome: dict[str, str] = {}
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=watch_parent,
                             initargs=(os.getpid(),)) as pool:
        try:
            futs = [pool.submit(pool_work, os.getpid(), spec, threads, n_gpu, -(-jobs // max(n_gpu, 1)))
                    for _ in range(jobs)]
            for i, f in enumerate(as_completed(futs)):
                try:
                    outcome.update(f.result())
                except Exception as e:
                    outcome[f"worker {i}"] = f"failed: {one_line(e)}"
        except Terminated:  # reached this process alone: stop the workers as Ctrl-C would, then wait for them
            pool.shutdown(wait=False, cancel_futures=True)  # a worker not yet at its task never starts it
            for p in mp.active_children():
                os.kill(p.pid, signal.SIGINT)
            raise
    return outcome


def fold_column(fold) -> str:
    return "holdout" if fold is None else f"fold{fold}"


def trial_rows(study, spec: StudySpec) -> list[dict]:
    """One row per original trial (its latest attempt): state, parameters, per-fold accuracy, mean ± sd."""
    latest: dict[int, Any] = {}
    for t in study.get_trials(deepcopy=False):
        latest[original(t)] = t
    rows = []
    for n, t in sorted(latest.items()):
        stem = member_stem(spec, n, t.params)
        accs, epochs, secs = [], 0, 0.0
        for fold in spec.folds:
            try:
                rec = runs.RunRecord.read(Path(spec.root) / member_name(stem, fold))
            except KmnistError:
                accs.append(None)
                continue
            accs.append(rec.best.accuracy if rec.best else None)
            epochs += rec.epochs_done
            secs += rec.wall_time_s or 0.0
        done = [a for a in accs if a is not None]
        complete = t.state.name == "COMPLETE"
        rows.append({"trial": n, "state": t.state.name.lower(), **t.params,
                     **{fold_column(f): a for f, a in zip(spec.folds, accs)},
                     "acc_mean": t.value if complete else None,
                     "acc_sd": statistics.stdev(done) if complete and len(done) > 1 else None,
                     "epochs": epochs, "time_s": round(secs, 1), "error": t.user_attrs.get("error", "")})
    return rows


def write_recipe(path: Path, cfg: TrainConfig, about: str) -> Path:
    """A config as a recipe file for `kmnist-fa train --recipe PATH`."""
    lines = [f"description = {json.dumps(about)}"]
    for k, v in recipe_values(cfg).items():
        lines.append(f"{k} = " + (json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool)
                                  else repr(v)))
    return write_text(path, "\n".join(lines) + "\n")


def write_outputs(study, spec: StudySpec) -> dict[str, Path]:
    """results.csv, best.toml and Optuna's matplotlib plots in the study folder."""
    root = Path(spec.root)
    rows = trial_rows(study, spec)
    fold_cols = [fold_column(f) for f in spec.folds]
    cols = ["trial", "state", *[p.name for p in spec.params], *fold_cols, "acc_mean", "acc_sd", "epochs", "time_s",
            "error"]
    written = {"results": write_csv(root / "results.csv", rows, cols)}
    done = [r for r in rows if r["state"] == "complete" and r["acc_mean"] is not None]
    if done:
        best = max(done, key=lambda r: r["acc_mean"])
        cfg = TrainConfig.from_dict(spec.base).replace(**{p.name: best[p.name] for p in spec.params})
        about = (f"best of study {spec.study}: trial {best['trial']} "
                 f"({best['acc_mean']:.4f} over {len(spec.folds)} fold(s))")
        written["best"] = write_recipe(root / "best.toml", cfg, about)
    written.update(_plots(study, spec, root))
    return written


def _plots(study, spec: StudySpec, root: Path) -> dict[str, Path]:
    """Optimisation history, parameter importances, slices and (2+ parameters) contours; a plot
    that needs more finished trials than there are is left out."""
    from optuna.importance import PedAnovaImportanceEvaluator
    from optuna.visualization import matplotlib as ovm

    from ..core.plots import plt, save_fig  # start-up speed, as in run_member

    makers = {"history": lambda: ovm.plot_optimization_history(study),
              "slice": lambda: ovm.plot_slice(study)}
    if len(spec.params) > 1:
        makers["importance"] = lambda: ovm.plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
        makers["contour"] = lambda: ovm.plot_contour(study)
    out = {}
    for name, make in makers.items():
        with warnings.catch_warnings(), plt.rc_context():  # Optuna switches to its ggplot style: keep it local
            warnings.simplefilter("ignore")
            try:
                ax = make()
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            fig = first.figure
            if not any(a.has_data() for a in fig.axes):
                plt.close(fig)
                continue
            if name == "history":
                first.set_ylabel("mean valid accuracy")
            else:
                fig.set_size_inches(max(6, 3.2 * len(spec.params)), 4)
            out[name] = save_fig(fig, root / f"tune-{name}.png")
    return out
