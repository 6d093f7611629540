"""Credentials in URLs (storages, tracking servers, mirrors) never reach a message, a log line or a traceback."""
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kmnist_fa.core.secrets import one_line, redact

REPO = Path(__file__).resolve().parents[1]
SECRET = "Sup3rS3cret"


@pytest.mark.parametrize("text,shown", [
    ("postgresql://user:s3cret@db.example/kmnist", "postgresql://user:***@db.example/kmnist"),
    ("postgresql+psycopg2://u:p%40ss@db:5432/x", "postgresql+psycopg2://u:***@db:5432/x"),
    ("error at http://u:p@ss@host:1/api failed", "error at http://u:***@host:1/api failed"),  # an unescaped @
    ("grpc://:tok@h:1 and mysql://a:b@c/d", "grpc://:***@h:1 and mysql://a:***@c/d"),
    ("https://hub/x?repo=a&access_token=abc123&b=2", "https://hub/x?repo=a&access_token=***&b=2"),
    ("https://s3/x?X-Amz-Signature=f00d#api_key=k", "https://s3/x?X-Amz-Signature=***#api_key=***"),
    ("postgresql://user@db/kmnist", "postgresql://user@db/kmnist"),  # no password: nothing to hide
    ("models/s/study.journal: no such file", "models/s/study.journal: no such file"),
    ("sqlite:///C:/x.db key=value", "sqlite:///C:/x.db key=value"),  # not a query parameter
])
def test_redact(text, shown):
    assert redact(text) == shown


def test_one_line_is_redacted_and_short():
    e = ConnectionError(f"cannot reach\n  http://u:{SECRET}@h:1/x\n" + "detail " * 100)
    line = one_line(e)
    assert line.startswith("ConnectionError: cannot reach http://u:***@h:1/x detail") and "\n" not in line
    assert SECRET not in line and len(line) <= 300
    assert one_line(KeyError()) == "KeyError"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens here once closed


def _cli(*args, env=None, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kmnist_fa", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "80", **(env or {})})


def _one_line_error(r: subprocess.CompletedProcess, *expected: str) -> str:
    text = r.stdout + r.stderr
    assert SECRET not in text, text
    assert r.returncode == 2 and len(text.strip().splitlines()) == 1, text
    for e in expected:
        assert e in text, text
    return text


@pytest.mark.slow
@pytest.mark.parametrize("storage,expected", [
    (f"grpc://u:{SECRET}@127.0.0.1:1/", "grpc://u:***@127.0.0.1:1/: a gRPC storage is grpc://HOST:PORT"),
    ("grpc://127.0.0.1:{port}", "cannot reach the storage (UNAVAILABLE: failed to connect"),
    (f"postgresql+nodriver://u:{SECRET}@127.0.0.1:1/kmnist", "postgresql+nodriver://u:***@127.0.0.1:1/kmnist: cannot open"),
    (f"postgresql://u:{SECRET}@127.0.0.1:{{port}}/kmnist", "postgresql://u:***@127.0.0.1:"),
])
def test_storage_secrets_stay_out_of_messages(kmnist_dir, tmp_path, storage, expected):
    r = _cli("tune", "lenet5", "-p", "lr=1e-3:1e-2", "--pruner", "none", "--data", str(kmnist_dir), "--models-dir",
             str(tmp_path), "--storage", storage.format(port=_free_port()), "--study", "s")
    _one_line_error(r, expected.format(port=""))


@pytest.mark.slow
def test_unreachable_tracking_server_is_one_line_before_any_run_folder(kmnist_dir, tmp_path):
    uri = f"http://u:{SECRET}@127.0.0.1:{_free_port()}"
    r = _cli("train", "lenet5", "--epochs", "1", "--data", str(kmnist_dir), "--models-dir", str(tmp_path / "m"),
             "--name", "t", "--track", "mlflow", env={"MLFLOW_TRACKING_URI": uri})
    _one_line_error(r, "--track mlflow: cannot reach the tracking server http://u:***@127.0.0.1:")
    assert not (tmp_path / "m" / "t").exists()


class Refusing(http.server.BaseHTTPRequestHandler):
    """A mirror that answers 404, 500 or garbage, and records the logins it was sent."""

    logins: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        Refusing.logins.append(self.headers.get("Authorization"))
        if "garbage" in self.path:
            self.wfile.write(b"not http at all\r\n\r\n")
        else:
            self.send_error(404 if "missing" in self.path else 500)


@pytest.mark.parametrize("answer", ["missing", "broken", "garbage"])
def test_mirror_secrets_stay_out_of_messages(tmp_path, answer):
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Refusing.logins = []
    try:
        mirror = f"http://u:{SECRET}@127.0.0.1:{httpd.server_address[1]}/{answer}/"
        r = _cli("data", "download", "kmnist", "--data", str(tmp_path / "dl"), "--mirror", mirror)
    finally:
        httpd.shutdown()
    _one_line_error(r, "cannot download train-images-idx3-ubyte.gz: http://u:***@127.0.0.1:")
    import base64

    assert Refusing.logins == ["Basic " + base64.b64encode(f"u:{SECRET}".encode()).decode()]  # sent as a login


def test_hub_push_error_is_redacted(monkeypatch, tmp_path):
    """huggingface_hub's errors name the endpoint, which may carry a login (HF_ENDPOINT)."""
    import huggingface_hub

    from kmnist_fa.core.errors import OptionError
    from kmnist_fa.infer.export import push

    class Unreachable:
        def create_repo(self, *a, **k):
            raise ConnectionError(f"cannot reach https://u:{SECRET}@hub.example/api/repos/create\nand more")

    monkeypatch.setattr(huggingface_hub, "HfApi", Unreachable)
    with pytest.raises(OptionError) as e:
        push(tmp_path, "me/x")
    assert str(e.value) == "--push me/x: upload failed (ConnectionError: cannot reach https://u:***@hub.example/api/repos/create)"
