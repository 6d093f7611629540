"""The web demo: request handling through Starlette's TestClient, and end to end in headless Chromium."""
import io
import re
import shutil
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

starlette = pytest.importorskip("starlette", reason="the demo extra is not installed (pip install -e '.[demo]')")
from starlette.testclient import TestClient  # noqa: E402

from kmnist_fa.data.images import decode_image  # noqa: E402
from kmnist_fa.infer.ensemble import combine, member_probs  # noqa: E402
from kmnist_fa.infer.predict import load_run  # noqa: E402
from kmnist_fa.infer.serve import MAX_BYTES, Predictor, create_app  # noqa: E402
from kmnist_fa.runs.paths import reference_dir  # noqa: E402

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    """The shipped LeNet5, with class names as a hostile dataset's classmap could make them."""
    from kmnist_fa.runs.record import RunRecord

    run = tmp_path_factory.mktemp("serve") / "lenet5"
    shutil.copytree(reference_dir() / "lenet5", run)
    rec = RunRecord.read(run)
    rec.classes = [f"{HOSTILE}{i}" for i in range(10)]
    rec.chars = ["<b>"] * 10
    rec.write(run)
    return Predictor([load_run(run, cpu=True)])


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


def _asgi_post(app, chunks, ctype: str) -> tuple[int, int]:
    """POST a body in chunks with no Content-Length (as a chunked upload arrives); (status, bytes it read)."""
    import asyncio

    it, read = iter(chunks), [0]

    async def receive():
        for c in it:
            read[0] += len(c)
            return {"type": "http.request", "body": c, "more_body": True}
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = []

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "POST", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
             "headers": [(b"content-type", ctype.encode())], "http_version": "1.1", "scheme": "http",
             "server": ("test", 80), "client": ("test", 1), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], read[0]


@pytest.mark.parametrize("ctype", ["image/png", "multipart/form-data; boundary=xyz"])
def test_chunked_upload_is_refused_once_it_passes_the_limit(predictor, ctype):
    app = create_app(predictor)
    chunk = b"\0" * 65536
    status, read = _asgi_post(app, (chunk for _ in range(16 * 1024)), ctype)  # a 1 GiB body, if read in full
    assert status == 413 and read <= MAX_BYTES + 3 * 65536


def test_page_headers_and_hostile_names(client, kmnist):
    r = client.get("/")
    csp = r.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert r.text.count(f'nonce="{nonce}"') == 2  # the page's own style and script, nothing else
    j = client.post("/predict", content=png_bytes(kmnist.train_x[3]), headers={"content-type": "image/png"}).json()
    assert j["top"][0]["name"].startswith(HOSTILE)  # JSON carries the text; the page shows it as text (browser test)


def test_page_serves_its_own_kana_font(client):
    """Kana need a Japanese font, which a fresh system may lack: the page brings the one the package installs for
    its plots, from the app itself (CSP `font-src 'self'`), under a content-named URL browsers may keep."""
    from kmnist_fa.core.plots import kana_font_file

    r = client.get("/")
    assert "font-src 'self'" in r.headers["content-security-policy"]
    url = re.search(r'@font-face\{font-family:"kmnist-kana";src:url\("(/fonts/kana-[0-9a-f]{12}\.ttf)"\)', r.text)[1]
    assert 'body{font-family:"kmnist-kana",' in r.text
    f = client.get(url)
    assert f.status_code == 200 and f.headers["content-type"] == "font/ttf"
    assert f.content == kana_font_file().read_bytes()
    assert "immutable" in f.headers["cache-control"] and "max-age=31536000" in f.headers["cache-control"]
    assert client.get("/fonts/kana-000000000000.ttf").status_code == 404


def test_a_slow_upload_does_not_stall_other_requests(server):
    """Decoding runs in a worker thread: the page still answers while a 40-megapixel strip is decoded."""
    import urllib.request

    im = Image.new("L", (40_000_000, 1), 255)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    req = urllib.request.Request(server + "predict", data=buf.getvalue(), headers={"Content-Type": "image/png"})
    res = {}
    t = threading.Thread(target=lambda: res.update(r=urllib.request.urlopen(req, timeout=60).status))
    t.start()
    time.sleep(0.2)
    t0 = time.time()
    with urllib.request.urlopen(server, timeout=30) as r:
        assert r.status == 200
    latency = time.time() - t0
    t.join(60)
    assert res.get("r") == 200 and latency < 0.5, latency


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


@pytest.mark.slow
@pytest.mark.e2e
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
        refused = []
        page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
        page.goto(server)
        # the kana line is drawn with the page's own font, loaded under its CSP (no tofu on a bare system)
        faces = page.evaluate("""async () => { await document.fonts.ready;
            return [...document.fonts].map(f => [f.family.replace(/"/g, ''), f.status]); }""")
        assert ["kmnist-kana", "loaded"] in faces, faces
        assert page.evaluate("() => document.fonts.check('1em kmnist-kana', 'お')")
        cdp = page.context.new_cdp_session(page)  # which fonts Chromium actually drew the kana line with
        cdp.send("DOM.enable")
        cdp.send("CSS.enable")
        line = cdp.send("DOM.querySelector", {"nodeId": cdp.send("DOM.getDocument")["root"]["nodeId"],
                                              "selector": "p"})["nodeId"]
        used = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": line})["fonts"]
        assert {f["familyName"]: f["glyphCount"] for f in used if f["isCustomFont"]} == {"IPAexGothic": 10}, used
        box = page.locator("#pad").bounding_box()
        page.mouse.move(box["x"] + 60, box["y"] + 60)
        page.mouse.down()
        for i in range(20):
            page.mouse.move(box["x"] + 60 + 8 * i, box["y"] + 60 + 6 * i)
        page.mouse.up()
        page.wait_for_selector("tr.pred")
        assert page.locator("tr.pred").count() == 3
        label = page.locator("tr.pred .label").first.text_content()
        assert label.startswith("<b> " + HOSTILE)  # shown as text ...
        assert page.locator("#result img").count() == 0 and page.title() != "pwned"  # ... never parsed or run
        assert page.locator("#seen").get_attribute("src").startswith("data:image/png")
        page.locator("#clear").click()
        assert page.locator("tr.pred").count() == 0
        page.set_input_files("#file", str(tmp_path / "valid.png"))
        page.wait_for_selector("tr.pred")
        shown = int(page.locator("tr.pred").first.get_attribute("data-cls"))
        (tmp_path / "bad.png").write_bytes(b"garbage")
        page.set_input_files("#file", str(tmp_path / "bad.png"))
        page.wait_for_selector("#error:not(:empty)")  # (the page's CSP forbids Playwright's eval-based waits)
        assert "not a readable image" in page.locator("#error").text_content()
        browser.close()
    assert refused == []
    assert shown == cli_class(predictor, data)
