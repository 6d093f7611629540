"""`kmnist-fa`: a thin typer layer over the Python API (the layers below: data, runs, train, infer, pipelines).

Each command parses options, calls one API function and renders the result with
rich. User errors (`KmnistError`) print one line on stderr and exit with code 2.
One module per command group; importing them registers their commands on `app`
in the order `--help` lists them.

Commands import the API inside their function bodies, for start-up speed only:
`--help`, `recipes` and option errors answer before torch and fastai load.
"""
# The import order is the order of the commands in --help.
# isort: off
from . import data, training, search, predict, serve, export, interpret, models  # noqa: F401  (registers commands)
# isort: on
from .common import app

__all__ = ["app"]
