"""The `kmnist-fa` command: the typer CLI where the full install is, the torch-free runtime where it is not.

An install with only the runtime's dependencies (docs/export-deploy.md) still has the
console script, and `kmnist-fa predict INPUT... --model X.onnx` is what such a deployment
runs; every other command says in one line what it needs instead of a traceback. Whether
the full install is there is asked of the import system without importing anything, so
the CLI starts no slower for it.
"""
from __future__ import annotations

import importlib.util
import sys

FULL = ("torch", "fastai", "typer", "rich")


def full_install() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in FULL)


def main() -> None:
    if full_install():
        from .cli import app

        app(prog_name="kmnist-fa")
        return
    from . import __version__
    from .runtime import FULL_INSTALL
    from .runtime import main as runtime_main

    argv = sys.argv[1:]
    if argv in ([], ["--help"], ["-h"]):
        print(f"kmnist-fa {__version__}, torch-free runtime: only `kmnist-fa predict INPUT... --model X.onnx` runs "
              f"here (`kmnist-fa predict --help`); every other command needs the full install ({FULL_INSTALL})")
        sys.exit(0 if argv else 2)
    if argv[:1] == ["predict"]:
        sys.exit(runtime_main(argv[1:], prog="kmnist-fa predict"))
    if argv == ["--version"]:
        print(f"kmnist-fa {__version__} (torch-free runtime)")
        return
    command = " ".join(["kmnist-fa", *argv[:1]])
    missing = ", ".join(m for m in FULL if importlib.util.find_spec(m) is None)
    print(f"error: {command}: needs the full install ({FULL_INSTALL}; missing here: {missing}); this one runs "
          "only `kmnist-fa predict INPUT... --model X.onnx`", file=sys.stderr)
    sys.exit(2)
