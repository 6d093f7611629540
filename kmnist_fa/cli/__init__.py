"""`kmnist-fa`: a thin typer layer over the Python API (data, learner, runs).

Each command parses options, calls one API function and renders the result with
rich. User errors (`KmnistError`) print one line on stderr and exit with code 2.
One module per command group; importing them registers their commands on `app`
in the order `--help` lists them.
"""
from . import data, training, search, prediction, interpretation, runs  # noqa: F401  (registers the commands)
from .common import app


__all__ = ["app"]
