"""What every command shares: the typer apps, the consoles, error handling and option declarations."""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..config.options import OPTIONS, SEED_MAX, TTA_N
from ..core.atomic import stdout_taken
from ..core.errors import KmnistError
from ..core.secrets import redact

os.environ.setdefault("MPLBACKEND", "Agg")  # the CLI only writes image files; never open a window

_typer_type_column = getattr(typer.core.TyperOption, "display_type_rich", None)


def _type_column(self, ctx):
    """A flag takes no value, so its help row gets no type placeholder: typer's rich help would print
    `--version <bool>` as if one were due. Its plain help already leaves flags and counts bare."""
    return None if self.is_flag or self.count else _typer_type_column(self, ctx)


if _typer_type_column is not None:  # a typer without the hook prints its own help, placeholders and all
    typer.core.TyperOption.display_type_rich = _type_column  # every option of every command, typer's own included

# One rule for terminal output: nothing printed is ever parsed as Rich markup. Paths, run
# names, class names and error messages come from users and files, and "[/]" or "[copy]"
# in one must print as itself; styling is applied with `note()` / Text objects instead.
out = Console(markup=False, soft_wrap=True)  # long lines are for the terminal to wrap, not us
err = Console(stderr=True, markup=False, soft_wrap=True)


def show(table: Table, console: Console = out) -> None:
    """Print a table without ever cutting a value short.

    Piped or redirected, it is printed at its natural width whatever COLUMNS says, so
    `kmnist-fa models | grep NAME` finds whole names; on a narrow terminal, cells wrap
    instead of ending in an ellipsis.
    """
    for col in table.columns:
        col.overflow, col.no_wrap = "fold", False
    if console.is_terminal:
        console.print(table)
    else:
        natural = Measurement.get(console, console.options.update(width=1 << 16), table).maximum
        Console(file=console.file, markup=False, width=max(natural, console.width), color_system=None).print(table)


def messages_to(files: dict[str, object], as_json: bool = False) -> Console:
    """The console for a command's tables and "wrote" lines: stderr when one of its text `files` (option -> path)
    goes to stdout (`core.atomic.stdout_taken`), else stdout."""
    return err if stdout_taken(files, as_json) else out


QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar (there is none when output is not a terminal).")


def note(label: str, style: str, text: str) -> Text:
    """`label` styled, then `text` exactly as given."""
    return Text.assemble((label, style), " ", text)

app = typer.Typer(name="kmnist-fa", no_args_is_help=True, add_completion=True, rich_markup_mode="rich",
                  help="fastai toolkit for Kuzushiji-MNIST and the MNIST family: data, training, lr-find, runs.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, download and preview datasets.")
models_app = typer.Typer(invoke_without_command=True, help="List saved runs, or show one (`models show NAME`).")
app.add_typer(data_app, name="data")
app.add_typer(models_app, name="models")


def friendly(fn):
    """Turn KmnistError into one line on stderr and exit code 2 (no traceback); a URL's password in it is masked
    here too, whatever raised it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KmnistError as e:
            err.print(note("error:", "bold red", redact(str(e))), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _version(value: bool):
    if value:
        out.print(f"kmnist-fa {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    """fastai toolkit for Kuzushiji-MNIST and the MNIST family."""


# ---------------------------------------------------------------- shared options

DatasetOpt = typer.Option(None, "--dataset", help=OPTIONS["dataset"].help)
DataOpt = typer.Option(None, "--data", help=OPTIONS["data"].help)
ModelsDirOpt = typer.Option(None, "--models-dir", help="Where runs live (default: env KMNIST_FA_MODELS or ./models).")
TtaOpt = typer.Option(None, "--tta/--no-tta", help="Test-time augmentation (fastai tta) per model "
                      "(default: the model's own setting: the shipped reference default's, or what a --model run "
                      "was trained with, `train --tta`; off for runs trained without it).")
TtaNOpt = typer.Option(None, "--tta-n", min=1, help="Augmented passes per model with --tta, plus the clean pass "
                       f"(default: the model's own setting, else {TTA_N}).")
CpuOpt = typer.Option(False, "--cpu", help=OPTIONS["cpu"].help)  # the training option, for inference commands
MethodOpt = typer.Option("mean", "--method", help="Combine models by 'mean' of probabilities or majority 'vote'.")
DefaultMethodOpt = typer.Option(None, "--method", help="Combine models by 'mean' of probabilities or majority 'vote' "
                                "(default mean; the reference default's own setting when it is used).")
TrackOpt = typer.Option([], "--track", help="Also log to an experiment tracker; repeatable: tensorboard (event "
                        "files in the run folder) or mlflow (MLFLOW_TRACKING_URI). Needs the track extra.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output (JSON on stdout) instead of tables.")


def print_json(obj) -> None:
    """JSON for scripts: exact values, never wrapped or cut to the terminal's width."""
    import json

    out.print_json(json.dumps(obj, ensure_ascii=False, default=str))


# bounded by `checked_seed`, not by typer: its range error is a usage box, not one line
SeedOpt = typer.Option(42, "--seed", help="Seed for TTA's random augmentations and vote tie-breaking (0 to "
                       f"{SEED_MAX:,}: numpy's limit): the same inputs, runs, options and seed give a byte-identical "
                       "CSV.")


def checked_seed(seed: int) -> int:
    """An inference `--seed`, held to the training option's bounds (one OptionError line outside them)."""
    return OPTIONS["seed"].check(seed)


SplitOpt = typer.Option("valid", "--split", help="valid: the run's own validation split; test: the dataset's "
                        "labelled test set.")


def default_text(o) -> str:
    d = "unset" if o.default is None else str(o.default).lower() if isinstance(o.default, bool) else str(o.default)
    if o.meta["recipe"]:
        return f" (default: the recipe's, else {d})"
    return "" if o.default in (None, False) else f" (default: {d})"


def training_options(fn=None, *, skip: tuple[str, ...] = ()):
    """Attach every training option of `config.options.OPTIONS` (plus --recipe) to a command, but those of the
    option groups in `skip` (lr-find never predicts, so it takes no `predict` options).

    Generated, so a new option declared in config/options.py appears in `train`, `lr-find`
    and `sweep` at once. Every default is None, meaning "from the recipe" (the
    architecture's default recipe unless --recipe names another), so only options
    typed on the command line override it.
    """
    if fn is None:
        return functools.partial(training_options, skip=skip)
    import inspect

    from ..config.options import OPTIONS

    opts = {"recipe": (Optional[str], typer.Option(None, "--recipe", help="Named recipe (`kmnist-fa recipes`) or a "
                                                   ".toml file; default: default-ARCH. Options below override it."))}
    for name, o in OPTIONS.items():
        if not o.flag.startswith("--") or o.group in skip:  # positional (ARCH): each command declares it
            continue
        decl = f"{o.flag}/--no-{o.flag[2:]}" if o.type is bool else o.flag
        opts[name] = (Optional[o.type], typer.Option(None, decl, help=o.help + default_text(o)))
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t)
               for k, (t, o) in opts.items()]
    fn.__signature__ = sig.replace(parameters=params)
    return fn


@contextlib.contextmanager
def interrupt_note(how: str):
    """Ctrl-C or SIGTERM: one line saying how to continue; exit 130 or 143 (the shell's 128 + signal number)."""
    import signal

    from ..core.interrupts import Terminated, sigterm_interrupts

    try:
        with sigterm_interrupts():
            yield
    except KeyboardInterrupt as e:
        code = 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
        err.print(f"{'terminated' if code == 143 else 'interrupted'}: continue with `{how}`", highlight=False,
                  soft_wrap=True)
        raise typer.Exit(code) from None
