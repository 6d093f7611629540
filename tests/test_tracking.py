"""`--track tensorboard|mlflow`: what the trackers record matches the run's own history."""
import csv
import http.server
import threading
from functools import partial

import pytest

from kmnist_fa.core.errors import OptionError
from kmnist_fa.pipelines.training import resume, train
from kmnist_fa.train import tracking

from .conftest import Interrupt, lenet_cfg


def _history(path):
    with open(path / "history.csv") as f:
        return list(csv.DictReader(f))


_cfg = partial(lenet_cfg, aug="none")


def test_tensorboard_scalars_match_history_across_a_resume(kmnist, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with pytest.raises(KeyboardInterrupt):  # stopped after its first epoch, then resumed: one curve
        train(_cfg(kmnist), name="tb", root=tmp_path, quiet=True, data=kmnist,
              cbs=[*tracking.callbacks(["tensorboard"]), Interrupt(0)])
    res = resume("tb", root=tmp_path, quiet=True, data=kmnist, cbs=tracking.callbacks(["tensorboard"]))
    ea = EventAccumulator(str(res.path / tracking.TB_DIR), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    per_epoch = len([e for e in ea.Scalars("train_loss")]) // 2
    hist = _history(res.path)
    for name in ("valid_loss", "accuracy"):
        events = ea.Scalars(name)
        assert [e.step for e in events] == [per_epoch, 2 * per_epoch]  # steps go on after the resume
        assert [e.value for e in events] == pytest.approx([float(h[name]) for h in hist], abs=1e-6)
    assert [e.step for e in ea.Scalars("train_loss")] == list(range(1, 2 * per_epoch + 1))
    assert {"lr_0", "mom_0"} <= set(ea.Tags()["scalars"]) and "confusion_matrix" in ea.Tags()["images"]


def test_mlflow_records_params_metrics_artifacts_and_parent_across_a_resume(kmnist, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("t", artifact_location=str(tmp_path / "art")))
    parent = tracking.parent_run("s", "sweep", {"param": "lr"})
    assert tracking.parent_run("s", "sweep", {"param": "lr"}) == parent  # found again, not duplicated
    root = tmp_path / "it's here"  # a quote in the path must not break finding the run again
    with pytest.raises(KeyboardInterrupt):  # interrupted after epoch 0 and resumed: one MLflow run goes on
        train(_cfg(kmnist), name="ml", root=root, quiet=True, data=kmnist,
              cbs=[*tracking.callbacks(["mlflow"], parent=parent), Interrupt(0)])
    res = resume("ml", root=root, quiet=True, data=kmnist, cbs=tracking.callbacks(["mlflow"], parent=parent))
    client = mlflow.MlflowClient()
    mine = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()]) if
            r.data.tags.get(tracking.RUN_TAG, "").endswith("/ml")]
    assert len(mine) == 1
    run = mine[0]
    assert run.data.tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "lenet5" and float(run.data.params["lr"]) == res.record.lr == 1e-2
    acc = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, round(m.value, 6)) for m in acc] == [(int(h["epoch"]), round(float(h["accuracy"]), 6))
                                                          for h in _history(res.path)]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/run.json", "run/model.pth", "run/history.csv"} <= arts


def test_unknown_or_uninstalled_tracker_is_refused(monkeypatch):
    with pytest.raises(OptionError, match="--track must be one of tensorboard, mlflow, got 'wandb'"):
        tracking.check_trackers(["wandb"])
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(OptionError, match=r"--track mlflow: needs mlflow: pip install 'kmnist-fa\[track\]'"):
        tracking.check_trackers(["mlflow"])


class FakeMlflow(http.server.BaseHTTPRequestHandler):
    """Just enough of an MLflow server to answer a search for experiments; records the logins it was sent."""

    logins: list = []

    def log_message(self, *a):
        pass

    def _answer(self):
        FakeMlflow.logins.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"experiments": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


def test_tracking_server_is_reached_when_the_tracker_is_set_up(monkeypatch):
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    import mlflow

    uri = f"http://u:Sup3rS3cret@127.0.0.1:{port}"
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: uri)  # MLFLOW_TRACKING_URI, unless a test set another
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # restored after the test
    start = time.monotonic()
    with pytest.raises(OptionError, match=r"cannot reach the tracking server http://u:\*\*\*@127\.0\.0\.1") as e:
        tracking.callbacks(["mlflow"])
    assert time.monotonic() - start < 30  # MLflow's own retries would take minutes
    assert "Sup3rS3cret" not in str(e.value) and "\n" not in str(e.value)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMlflow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    FakeMlflow.logins = []
    try:
        uri = f"http://u:Sup3rS3cret@127.0.0.1:{httpd.server_address[1]}"
        assert tracking.check_trackers(["mlflow"]) == ["mlflow"]
    finally:
        httpd.shutdown()
    assert FakeMlflow.logins and all(a and a.startswith("Basic ") for a in FakeMlflow.logins)
    import os

    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"  # MLflow's run links repeat the URI
