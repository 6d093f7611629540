"""Experiment tracking: TensorBoard event files in the run folder, and MLflow runs.

`--track tensorboard` uses fastai's `TensorBoardCallback`, writing to `<run>/tensorboard/`:
per step the smoothed training loss and every optimiser hyper-parameter (`lr_0`,
`mom_0`, ... per parameter group), per epoch the validation loss and metrics, and the
validation confusion matrix as an image at the end. Steps count through the whole run,
so a resumed run's curves continue where the first part stopped.

`--track mlflow` logs to `MLFLOW_TRACKING_URI` (MLflow's default otherwise): the typed
config as parameters, each epoch's row of history.csv as metrics, and the run folder as
artifacts. A resumed run continues its MLflow run; members of a sweep or tune are child
runs of one parent run per study (MLflow's `mlflow.parentRunId` tag). The tracking server
is reached once when the tracker is set up, before any run folder exists: one that cannot
be is a one-line error, since a run meant to be tracked should not quietly go untracked.
A password in the URI never reaches a message (`core.secrets`).

Both need the `track` extra: `pip install "kmnist-fa[track]"`. Only rank 0 logs.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
from pathlib import Path
from unittest import mock

from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib

from ..core.errors import OptionError
from ..core.plots import class_labels, plot_confusion_matrix
from ..core.secrets import one_line, redact
from ..runs.record import RunRecord

TRACKERS = ("tensorboard", "mlflow")
TB_DIR = "tensorboard"
RUN_TAG = "kmnist_fa.run"  # the run folder (or study) an MLflow run belongs to, for people
KEY_TAG = "kmnist_fa.key"  # a hash of it, for finding the run again: paths may hold quotes a filter cannot


def _find(mlflow, what: str) -> str | None:
    """The id of the MLflow run tagged with `what`, if there is one."""
    import hashlib

    key = hashlib.sha256(what.encode()).hexdigest()
    found = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{KEY_TAG}` = '{key}'",
                               output_format="list", max_results=1)
    return found[0].info.run_id if found else None


def _tags(what: str) -> dict:
    import hashlib

    return {RUN_TAG: what, KEY_TAG: hashlib.sha256(what.encode()).hexdigest()}


def check_trackers(names: list[str] | None) -> list[str]:
    """The `--track` values, checked before any training starts (known name, package installed)."""
    out = []
    for n in names or []:
        if n not in TRACKERS:
            raise OptionError(f"--track must be one of {', '.join(TRACKERS)}, got {n[:40]!r}")
        needs = "tensorboard" if n == "tensorboard" else "mlflow"
        try:
            missing = importlib.util.find_spec(needs) is None
        except ValueError:  # already imported without a spec: installed
            missing = False
        if missing:
            raise OptionError(f"--track {n}: needs {needs}: pip install 'kmnist-fa[track]'")
        if n not in out:
            out.append(n)
    if "mlflow" in out:
        _reach_mlflow()
    return out


def _reach_mlflow() -> None:
    """Ask the tracking server for one experiment, failing fast: MLflow itself retries an unreachable server
    for minutes, then fails inside the first epoch with its URI, password included, in a long traceback."""
    import mlflow
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
        MLFLOW_HTTP_REQUEST_TIMEOUT,
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT,
    )

    uri = mlflow.get_tracking_uri()
    if redact(uri) != uri:  # MLflow prints a link to every run it ends, built from the URI
        os.environ[MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name] = "true"
    with mock.patch.dict(os.environ, {MLFLOW_HTTP_REQUEST_MAX_RETRIES.name: "0",
                                      MLFLOW_HTTP_REQUEST_TIMEOUT.name: "10"}):
        try:
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
        except Exception as e:  # MLflow's, requests' and SQLAlchemy's many errors for a server out of reach
            raise OptionError(f"--track mlflow: cannot reach the tracking server {redact(uri)} "
                              f"({one_line(e)})") from None


def callbacks(names: list[str] | None, parent: str | None = None) -> list[Callback]:
    """fastai callbacks for `train(cbs=...)` / `resume(cbs=...)`; `parent`: an MLflow parent run id."""
    cbs: list[Callback] = []
    for n in check_trackers(names):
        cbs.append(RunTensorBoard() if n == "tensorboard" else MLflowRun(parent))
    return cbs


def RunTensorBoard():  # noqa: N802  (a callback factory: fastai's module imports tensorboard)
    return _run_tensorboard_class()(trace_model=False, log_preds=False)


@functools.lru_cache(maxsize=1)
def _run_tensorboard_class():
    """fastai's `TensorBoardCallback` with steps counted over the whole run, in `<run>/tensorboard/`.

    fastai counts steps with `train_iter`, which restarts at every fit (a resume, or
    fine-tuning's second phase); this offsets it by the batches of the run's earlier
    epochs. No graph tracing or prediction images (they replay batches through
    `show_results`); the validation confusion matrix is added at the end instead.
    Built on first use, since fastai's module imports tensorboard.
    """
    from fastai.callback.tensorboard import TensorBoardCallback

    class _RunTensorBoard(TensorBoardCallback):
        def before_fit(self):
            self.log_dir = str(Path(self.learn.path) / TB_DIR)
            self.per_epoch = len(self.dls.train)
            super().before_fit()

        @property
        def train_iter(self) -> int:
            """fastai's step (batches trained so far), counted from the run's first epoch."""
            epoch = getattr(self.learn, "run_epoch", self.learn.epoch)
            return epoch * self.per_epoch + (self.learn.iter + 1 if self.learn.training else self.per_epoch)

        def after_batch(self):  # fastai's logs validation batches too, at the last training step
            if self.training:
                super().after_batch()

        def after_epoch(self):  # fastai's, minus values a run without validation does not have
            for n, v in zip(self.recorder.metric_names[2:-1], self.recorder.log[2:-1]):
                if v is not None and math.isfinite(float(v)):
                    self.writer.add_scalar(n, float(v), self.train_iter)
            self.writer.flush()  # an epoch's events are on disk before the next can be interrupted

        def after_fit(self):
            if self.run and getattr(self.dls.valid, "n", 0):
                self.writer.add_figure("confusion_matrix", _confusion_figure(self.learn), self.train_iter)
            super().after_fit()

    return _RunTensorBoard


def _confusion_figure(learn):
    """The validation confusion matrix of the weights at the end of the fit. Predicted here with the model
    alone: fastai's `get_preds` would replay `before_fit` through every callback of the fit in progress."""
    import torch

    model, dl = learn.model, learn.dls.valid
    n = len(learn.dls.vocab)
    counts = torch.zeros(n, n, dtype=torch.long)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for xb, yb in dl:
            pred = model(xb).argmax(1).cpu().as_subclass(torch.Tensor)
            true = yb.cpu().long().as_subclass(torch.Tensor)
            counts.index_put_((true, pred), torch.ones_like(pred), accumulate=True)
    model.train(was_training)
    vocab = [str(v) for v in learn.dls.vocab]
    chars = getattr(getattr(learn.dls, "info", None), "chars", None)
    return plot_confusion_matrix(counts.numpy(), class_labels(vocab, chars))


@contextlib.contextmanager
def _mlflow_errors():
    """MLflow's errors (a server lost mid-run) as one line: they name the tracking URI, password and all,
    at the end of pages of traceback. Used as a decorator."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as e:  # OSError: requests' errors, a full disk under a local store
        raise OptionError(f"--track mlflow: {one_line(e)}") from None


class MLflowRun(Callback):
    """One MLflow run per run folder: config as parameters, history rows as metrics, the folder as artifacts."""

    order = 56  # after RunRecorder (55): the epoch's row of history.csv is written

    def __init__(self, parent: str | None = None):
        self.parent = parent

    @_mlflow_errors()
    def before_fit(self):
        self.active = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds") \
            and rank_distrib() == 0
        if not self.active:
            return
        import mlflow

        self.mlflow = mlflow
        folder = Path(self.learn.path).resolve()
        rec = RunRecord.read(folder)
        found = _find(mlflow, str(folder))
        active = mlflow.active_run()
        if active and active.info.run_id == found:  # left open by an interrupted fit in this process
            mlflow.end_run("KILLED")
        nested = mlflow.active_run() is not None  # inside a run of the user's own
        if found:  # a resume, or the second phase of fine-tuning: the same MLflow run goes on
            mlflow.start_run(run_id=found, nested=nested)
        else:
            tags = {**_tags(str(folder)), **({"mlflow.parentRunId": self.parent} if self.parent else {})}
            mlflow.start_run(run_name=rec.name, tags=tags, nested=nested)
            mlflow.log_params(rec.config.flat())
        self.logged = len(rec.history)  # rows an earlier part of the run has logged already

    @_mlflow_errors()
    def after_epoch(self):
        if not self.active:
            return

        history = RunRecord.read(self.learn.path).history  # with the row RunRecorder has just committed
        for row in history[self.logged:]:  # none for the epochs a resume skips
            self.mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch" and v is not None},
                                    step=int(row["epoch"]))
        self.logged = len(history)

    @_mlflow_errors()
    def after_fit(self):
        if not self.active:
            return

        try:
            rec = RunRecord.read(self.learn.path)
            if rec.epochs_done >= rec.total_epochs:  # the last fit of the run: its folder as artifacts
                self.mlflow.log_artifacts(str(self.learn.path), artifact_path="run")
        finally:
            self.mlflow.end_run()


@_mlflow_errors()
def parent_run(study: str, kind: str, params: dict) -> str:
    """An MLflow parent run for a sweep or tune (created once, found again when the study continues)."""
    import mlflow

    tag = f"{kind}:{study}"
    found = _find(mlflow, tag)
    if found:
        return found
    with mlflow.start_run(run_name=f"{kind} {study}", tags=_tags(tag)) as r:
        mlflow.log_params(params)
        return r.info.run_id
