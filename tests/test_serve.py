"""The web demo: request handling through Starlette's TestClient, and end to end in headless Chromium."""
import io
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

starlette = pytest.importorskip("starlette", reason="the demo extra is not installed (pip install -e '.[demo]')")
from starlette.testclient import TestClient  # noqa: E402

from kmnist_fa.ensemble import combine, member_probs  # noqa: E402
from kmnist_fa.images import decode_image  # noqa: E402
from kmnist_fa.inference import load_run  # noqa: E402
from kmnist_fa.runs import reference_dir  # noqa: E402
from kmnist_fa.serve import MAX_BYTES, Predictor, create_app  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    return Predictor([load_run(reference_dir() / "lenet5", cpu=True)])


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(predictor))


def png_bytes(arr: np.ndarray, size: int | None = None) -> bytes:
    im = Image.fromarray(arr)
    if size:
        im = im.resize((size, size))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def cli_class(predictor, data: bytes) -> int:
    """What `kmnist-fa predict` would say for these bytes (same preprocessing, same combination)."""
    img = decode_image(data, "x")
    return int(combine(member_probs(predictor.members, img[None]), "mean").argmax(1)[0])


def test_page_is_offline(client):
    r = client.get("/")
    assert r.status_code == 200 and "<canvas" in r.text
    assert "http://" not in r.text and "https://" not in r.text  # no CDN, fonts or analytics


def test_upload_matches_predict(client, predictor, kmnist):
    data = png_bytes(255 - kmnist.train_x[7], 96)  # dark ink on white, another size
    r = client.post("/predict", files={"file": ("char.png", data, "image/png")})
    assert r.status_code == 200, r.text
    j = r.json()
    assert len(j["top"]) == 3 and j["top"][0]["prob"] >= j["top"][1]["prob"]
    assert j["top"][0]["class"] == cli_class(predictor, data)
    assert j["seen"].startswith("data:image/png;base64,")
    r2 = client.post("/predict", content=data, headers={"content-type": "image/png"})
    assert r2.json()["top"] == j["top"]


def test_bad_requests_get_4xx(client):
    r = client.post("/predict", files={"file": ("x.png", b"not an image", "image/png")})
    assert r.status_code == 400 and "not a readable image" in r.json()["error"]
    r = client.post("/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = client.post("/predict", content=b"\0" * (MAX_BYTES + 1), headers={"content-type": "image/png"})
    assert r.status_code == 413
    r = client.post("/predict", data={"other": "x"})
    assert r.status_code in (400, 415)
    huge = Image.new("L", (9000, 9000))
    buf = io.BytesIO()
    huge.save(buf, format="PNG")
    r = client.post("/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 400 and "larger than" in r.json()["error"]


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def server(predictor):
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(predictor), host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    for _ in range(100):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    t.join(5)


def test_browser_draw_and_upload(server, predictor, kmnist, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    data = png_bytes(kmnist.train_x[11])
    (tmp_path / "valid.png").write_bytes(data)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        page = browser.new_page()
        page.goto(server)
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + 60, box["y"] + 60)
        page.mouse.down()
        for i in range(20):
            page.mouse.move(box["x"] + 60 + 8 * i, box["y"] + 60 + 6 * i)
        page.mouse.up()
        page.wait_for_selector("tr.pred")
        assert page.locator("tr.pred").count() == 3
        assert page.locator("#seen").get_attribute("src").startswith("data:image/png")
        page.locator("#clear").click()
        assert page.locator("tr.pred").count() == 0
        page.set_input_files("#file", str(tmp_path / "valid.png"))
        page.wait_for_selector("tr.pred")
        shown = int(page.locator("tr.pred").first.get_attribute("data-cls"))
        (tmp_path / "bad.png").write_bytes(b"garbage")
        page.set_input_files("#file", str(tmp_path / "bad.png"))
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "not a readable image" in page.locator("#error").text_content()
        browser.close()
    assert shown == cli_class(predictor, data)
