"""`kmnist-fa serve`: draw a character in the browser, see the model's top 3.

A small Starlette app with one self-contained page (inline CSS and JS, and the kana font
the package already installs for its plots served by the app itself: no CDN, no
analytics, so it works with no network, and the kana are no tofu boxes on a machine
without a Japanese font). Drawings and uploads go through
exactly the preprocessing of `kmnist-fa predict` (`data.images.decode_image`: grayscale,
inversion of dark-on-light, framing to 28x28), and the page shows the 28x28 image
the model actually saw. Needs the `demo` extra: `pip install -e ".[demo]"`.

Hostile input stays harmless: bodies are read at most `MAX_BYTES` (plus one) whatever
their headers claim, decoding and prediction run in worker threads so one slow image
never holds the event loop, run and class names (from run.json and a dataset's
classmap) reach the page escaped or as `textContent`, and a Content-Security-Policy
lets only the page's own nonce-tagged script run and only the app's own font load.

Memory is bounded across requests, not only per request: a 169 KB PNG can declare
6324x6324 RGBA (160 MB decoded, several times that while framed), so an image's size
is read from its header and held to `MAX_PIXELS` before any pixel is decoded; at most
`max_concurrent` images are decoded and predicted at once and at most `MAX_UPLOADS`
bodies are held; past either the answer is 503 with Retry-After rather than a queue,
since a queue would hold each waiting upload's bytes. Peak RSS is then about the
start-up figure plus `MAX_UPLOADS` bodies plus `max_concurrent` decodes
(docs/export-deploy.md gives the measured figure).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import io
import secrets
import threading
from collections.abc import Sequence

import numpy as np

from ..config.options import TTA_N
from ..core.errors import DataError
from ..core.plots import kana_font_file
from ..data.images import decode_image
from .ensemble import check_members, combine, member_probs

MAX_BYTES = 5 * 2**20
# a 2000x2000 scan: a 28x28 classifier gains nothing from more, and one decode of it (RGBA, every pixel ink)
# peaks near 120 MB in decode_image, against 1.5 GB for the 40-megapixel images `predict` accepts from files
MAX_PIXELS = 4_000_000
MAX_CONCURRENT = 2  # images decoded and predicted at once (`serve --max-concurrent`)
MAX_UPLOADS = 8  # requests reading or holding an upload at once; each holds up to two copies of MAX_BYTES
MAX_CONNECTIONS = 64  # uvicorn answers 503 past this many open connections (`limit_concurrency`)
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")
# what Pillow may decode here, whatever the Content-Type said: no TIFF/PSD/EPS (EPS runs Ghostscript) parsers on
# untrusted uploads; MPO is how Pillow names the JPEGs many phones write
IMAGE_FORMATS = {"PNG", "JPEG", "MPO", "GIF", "WEBP", "BMP"}
OPEN_FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP"]  # Pillow's openers for them (JPEG's opens MPO too)


class Refused(Exception):
    """An upload answered with an HTTP error before its pixels are decoded."""

    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status = status


def check_header(data: bytes) -> None:
    """Refuse, from the header alone, images over the pixel budget or of formats the demo does not decode.

    `Image.open` reads no pixels, and only the first frame of an animation is ever
    decoded, so what the header declares bounds what `decode_image` allocates.
    Unreadable data passes: `decode_image` opens it the same way and says why in the
    words `predict` uses. PIL's own bomb limits (a warning at 89 megapixels, an error
    at 179) lie far above the budget; either, raised, is a 413 like the budget's.
    """
    from PIL import Image

    try:  # only these formats' parsers ever see the bytes (Pillow would otherwise try TIFF, PSD, EPS ... in turn)
        with Image.open(io.BytesIO(data), formats=OPEN_FORMATS) as im:
            fmt, (w, h) = im.format, im.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the warning: where a filter raises it
        raise Refused(413, f"image is over {MAX_PIXELS:,} pixels; send a smaller one") from None
    except Image.UnidentifiedImageError:
        raise Refused(415, "not a PNG, JPEG, GIF, WebP or BMP image") from None
    except Exception:  # whatever Pillow raises on a damaged file, decode_image raises again and reports
        return
    if fmt not in IMAGE_FORMATS:
        raise Refused(415, f"{fmt} images are not accepted; send PNG, JPEG, GIF, WebP or BMP")
    if w * h > MAX_PIXELS:
        raise Refused(413, f"image is {w}x{h}, over the {MAX_PIXELS:,}-pixel budget; send a smaller one")


class Gate:
    """At most `limit` requests in one stage; the next is refused, not queued. Used from the event loop only."""

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    @contextlib.contextmanager
    def slot(self):
        if self.held >= self.limit:
            yield False
            return
        self.held += 1
        try:
            yield True
        finally:
            self.held -= 1


class Predictor:
    """The loaded runs and how to combine them; one call per image."""

    def __init__(self, members: Sequence, tta: bool = False, tta_n: int = TTA_N, method: str = "mean"):
        self.members, self.tta, self.tta_n, self.method = list(members), tta, tta_n, method
        self.classes = check_members(self.members)
        self.chars = self.members[0].chars
        self._lock = threading.Lock()  # a fastai Learner predicts one batch at a time

    def __call__(self, img: np.ndarray, k: int = 3) -> list[dict]:
        with self._lock:
            probs = combine(member_probs(self.members, img[None], self.tta, self.tta_n), self.method)[0]
        top = probs.topk(min(k, len(probs)))
        return [{"class": int(i), "name": self.classes[i], "char": self.chars[i] if self.chars else "",
                 "prob": round(float(p), 4)} for p, i in zip(top.values.tolist(), top.indices.tolist())]


def png_data_url(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).resize((112, 112), Image.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def create_app(predictor: Predictor, max_concurrent: int = MAX_CONCURRENT):
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.routing import Route

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    def busy(what: str) -> JSONResponse:
        return JSONResponse({"error": f"busy ({what}); try again in a moment"}, status_code=503,
                            headers={"Retry-After": "1"})

    too_large = f"upload too large (limit {MAX_BYTES:,} bytes)"
    uploads, decodes = Gate(MAX_UPLOADS), Gate(max_concurrent)
    models = html.escape(", ".join(m.name for m in predictor.members) + (" (TTA)" if predictor.tta else ""))

    font = kana_font_file()
    # named by its content, so browsers may keep it for good: another font file gets another URL
    font_url = f"/fonts/kana-{hashlib.md5(font.read_bytes()).hexdigest()[:12]}.ttf" if font else None
    font_face = FONT_FACE.replace("__FONT__", font_url) if font else ""

    async def index(request: Request):
        nonce = secrets.token_urlsafe(16)
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src data:; "
               "font-src 'self'; connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'")
        page = PAGE.replace("__FONT_FACE__", font_face).replace("__MODELS__", models).replace("__NONCE__", nonce)
        return HTMLResponse(page, headers={"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff"})

    async def kana_font(request: Request):
        return FileResponse(font, media_type="font/ttf", headers={
            "Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"})

    async def capped_body(request: Request, keep: bool = True) -> bytes | None:
        """The body, or None once it passes MAX_BYTES (chunked uploads have no Content-Length to trust)."""
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > MAX_BYTES + 64 * 1024:  # room for the multipart framing around a MAX_BYTES image
                return None
            if keep:
                chunks.append(chunk)
        return b"".join(chunks)

    async def predict(request: Request):
        with uploads.slot() as admitted:
            if not admitted:
                await capped_body(request, keep=False)  # so a client still sending gets the 503, not a reset
                return busy(f"{MAX_UPLOADS} uploads in progress")
            got = await read_upload(request)
            if isinstance(got, JSONResponse):
                return got
            data, name = got
            try:
                await run_in_threadpool(check_header, data)
            except Refused as e:
                return error(e.status, str(e))
            with decodes.slot() as admitted:
                if not admitted:
                    return busy(f"{max_concurrent} images being decoded")
                try:
                    img = await run_in_threadpool(decode_image, data, name)
                except DataError as e:
                    return error(400, str(e))
                top = await run_in_threadpool(predictor, img)
        return JSONResponse({"top": top, "seen": png_data_url(img)})

    async def read_upload(request: Request) -> tuple[bytes, str] | JSONResponse:
        """The image's bytes (and what to call them in errors) from a raw body or a form's `file` field."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        try:
            if int(request.headers.get("content-length") or 0) > MAX_BYTES + 64 * 1024:
                return error(413, too_large)
        except ValueError:
            return error(400, "bad Content-Length")
        if ctype != "multipart/form-data" and ctype not in IMAGE_TYPES:
            return error(415, f"unsupported content type {ctype[:60] or '(none)'}; send an image or a form upload")
        body = await capped_body(request)
        if body is None:
            return error(413, too_large)
        if ctype == "multipart/form-data":
            async def replay():
                return {"type": "http.request", "body": body, "more_body": False}

            form = await Request(request.scope, replay).form(max_files=1, max_fields=4, max_part_size=MAX_BYTES)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                return error(400, "form field 'file' with an image is required")
            data, name = await upload.read(), "upload"
        else:
            data, name = body, "drawing"
        if len(data) > MAX_BYTES:
            return error(413, too_large)
        if not data:
            return error(400, "empty upload")
        return data, name

    routes = [Route("/", index), Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes + ([Route(font_url, kana_font)] if font else []))


# Only kana and kanji come from it (unicode-range): Latin text keeps the system's font, and a page with no
# kana would not even fetch it.
FONT_FACE = """@font-face{font-family:"kmnist-kana";src:url("__FONT__") format("truetype");font-display:swap;
unicode-range:U+3000-30FF,U+4E00-9FFF}
"""


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kmnist-fa: draw a kana</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style nonce="__NONCE__">
__FONT_FACE__body{font-family:"kmnist-kana",system-ui,sans-serif;margin:2em auto;max-width:760px;color:#222}
.row{display:flex;gap:2em;flex-wrap:wrap}
canvas{border:2px solid #444;border-radius:6px;touch-action:none;cursor:crosshair;background:#fff}
button{font-size:1em;padding:.4em 1em;margin:.5em .5em 0 0}
.bar{height:1.4em;background:#4a78c2;border-radius:3px}
.label{font-size:1.3em;width:6em}
table{border-collapse:collapse}td{padding:.2em .5em}
#error{color:#b00020;min-height:1.2em}
#seen{image-rendering:pixelated;border:1px solid #999;width:112px;height:112px}
</style></head><body>
<h1>Draw a hiragana</h1>
<p>お き す つ な は ま や れ を — draw one with the mouse, or upload an image. Model: __MODELS__.</p>
<div class="row">
<div><canvas id="pad" width="280" height="280"></canvas><br>
<button id="clear">Clear</button><label>Upload <input type="file" id="file" accept="image/*"></label></div>
<div><table id="result"></table>
<p>What the model saw (28x28):<br><img id="seen" alt="28x28 input"></p>
<p id="error" role="alert"></p></div>
</div>
<script nonce="__NONCE__">
const pad=document.getElementById('pad'),ctx=pad.getContext('2d');
function clearPad(){ctx.fillStyle='#fff';ctx.fillRect(0,0,pad.width,pad.height);}
clearPad();ctx.lineWidth=18;ctx.lineCap='round';ctx.lineJoin='round';ctx.strokeStyle='#000';
let drawing=false;
function pos(e){const r=pad.getBoundingClientRect();return [e.clientX-r.left,e.clientY-r.top];}
pad.addEventListener('pointerdown',e=>{drawing=true;const[x,y]=pos(e);ctx.beginPath();ctx.moveTo(x,y);});
pad.addEventListener('pointermove',e=>{if(!drawing)return;const[x,y]=pos(e);ctx.lineTo(x,y);ctx.stroke();});
function finish(){if(!drawing)return;drawing=false;pad.toBlob(b=>send(b,'image/png'),'image/png');}
pad.addEventListener('pointerup',finish);pad.addEventListener('pointerleave',finish);
document.getElementById('clear').onclick=()=>{clearPad();show(null);};
document.getElementById('file').onchange=e=>{const f=e.target.files[0];if(!f)return;
  const fd=new FormData();fd.append('file',f);send(fd,null);};
async function send(body,type){
  const opts={method:'POST',body};if(type)opts.headers={'Content-Type':type};
  const r=await fetch('/predict',opts);const j=await r.json().catch(()=>({error:r.status+' '+r.statusText}));
  if(!r.ok){show(null);document.getElementById('error').textContent=j.error;return;}
  show(j);}
function show(j){
  const t=document.getElementById('result');t.innerHTML='';document.getElementById('error').textContent='';
  const seen=document.getElementById('seen');
  if(!j){seen.removeAttribute('src');return;}
  seen.src=j.seen;
  j.top.forEach((p,i)=>{const tr=t.insertRow();tr.className='pred';tr.dataset.cls=p.class;
    const label=document.createElement('span');label.className='label';label.textContent=p.char+' '+p.name;
    tr.insertCell().appendChild(label);
    const bar=document.createElement('div');bar.className='bar';bar.style.width=Math.max(2,Math.round(p.prob*200))+'px';
    tr.insertCell().appendChild(bar);
    tr.insertCell().textContent=(p.prob*100).toFixed(1)+'%';});
}
</script></body></html>
"""
