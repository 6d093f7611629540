"""`kmnist-fa serve`: the web demo."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..core.errors import OptionError
from .common import CpuOpt, DefaultMethodOpt, ModelsDirOpt, TtaNOpt, TtaOpt, app, err, friendly, note
from .predict import load_members


@app.command("serve")
@friendly
def serve_cmd(model: Optional[list[str]] = typer.Argument(None, metavar="[RUN...]", help="Runs to serve "
                                                          "(default: the shipped reference model)."),
              host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
              port: int = typer.Option(7860, "--port", min=1, max=65535, help="TCP port."),
              tta: Optional[bool] = TtaOpt, tta_n: Optional[int] = TtaNOpt, method: Optional[str] = DefaultMethodOpt,
              # infer.serve.MAX_CONCURRENT, not imported here: infer.serve loads torch, and --help should not wait
              max_concurrent: int = typer.Option(2, "--max-concurrent", min=1, help="Images decoded and predicted "
                                                 "at once; more get 503 (each takes up to ~120 MB)."),
              models_dir: Optional[Path] = ModelsDirOpt,
              cpu: bool = CpuOpt):
    """Web demo: draw a character (or upload an image) and watch the top-3 guesses. Needs the demo extra."""
    try:
        import uvicorn
    except ImportError:
        raise OptionError('serve needs the demo extra: pip install -e ".[demo]"') from None
    from ..infer.serve import MAX_CONNECTIONS, Predictor, create_app

    members, settings = load_members(model, models_dir, cpu)
    predictor = Predictor(members, tta if tta is not None else settings.on, tta_n or settings.n,
                          method or settings.method)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(note("warning:", "yellow", f"--host {host}: the demo is reachable from other machines on the "
                       "network, with no authentication"), highlight=False, soft_wrap=True)
    err.print(f"serving {', '.join(m.name for m in members)} on http://{host}:{port}/ (Ctrl-C stops)",
              highlight=False)
    uvicorn.run(create_app(predictor, max_concurrent), host=host, port=port, log_level="warning",
                limit_concurrency=MAX_CONNECTIONS)
