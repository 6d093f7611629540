"""The README's examples, run as a new user would type them, so docs and behaviour cannot drift apart.

Every ```bash block right after a `<!-- example -->` line runs, top to bottom, in one
working folder (later blocks use the runs earlier ones trained). Three things differ
from a user's machine, all to keep it to a minute on the committed sample:
`../shared/data/kmnist-10k` becomes `tests/data/kmnist-mini` (the same format, and
`KMNIST_FA_DATA` points there too), every `train` gets `--epochs 1`, and the folder
holds a `char.png` (a KMNIST image). Each command must exit 0 and print something.
"""
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = "../shared/data/kmnist-10k"


def readme_examples(text: str) -> list[str]:
    """Commands of the marked blocks, trailing comments dropped."""
    blocks = re.findall(r"<!-- example -->\s*\n```bash\n(.*?)```", text, flags=re.S)
    cmds = []
    for block in blocks:
        for line in block.splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line:
                cmds.append(line)
    return cmds


def test_the_runner_finds_the_examples():
    cmds = readme_examples((ROOT / "README.md").read_text())
    assert cmds[0] == f"kmnist-fa train --recipe fast --data {SAMPLE} --name first"  # the quick start comes first
    assert {c.split()[1] for c in cmds} >= {"train", "predict", "interpret", "lr-find", "ensemble", "archs", "models"}
    assert all(c.startswith("kmnist-fa ") for c in cmds), cmds


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_readme_examples_run(tmp_path, kmnist_dir, kmnist, monkeypatch):
    """In one process (typer's runner calls the same app the `kmnist-fa` script does): torch loads once."""
    from typer.testing import CliRunner

    from kmnist_fa.cli import app

    Image.fromarray(kmnist.test_x[0]).save(tmp_path / "char.png")
    monkeypatch.chdir(tmp_path)
    env = {"KMNIST_FA_DATA": str(kmnist_dir), "KMNIST_FA_MODELS": str(tmp_path / "models"), "COLUMNS": "200"}
    for cmd in readme_examples((ROOT / "README.md").read_text()):
        args = shlex.split(cmd.replace(SAMPLE, str(kmnist_dir)))[1:]
        if args[0] == "train" and "--resume" not in args:
            args += ["--epochs", "1"]
        r = CliRunner().invoke(app, args, env=env)
        assert r.exit_code == 0, f"{cmd}\n{r.output[-3000:]}\n{r.exception!r}"
        assert r.output.strip(), f"{cmd}: printed nothing"
    assert (tmp_path / "submission.csv").read_text().startswith("Id,Category\n")
    assert (tmp_path / "lr_find.png").stat().st_size > 0 and (tmp_path / "batch.png").stat().st_size > 0
