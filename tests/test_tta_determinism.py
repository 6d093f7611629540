"""TTA's augmentations depend on the seed and the image only, never on the other images of the call."""
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kmnist_fa.cli import app
from kmnist_fa.config.options import TtaSettings
from kmnist_fa.infer.predict import load_run, predict_probs, tta_parts


@pytest.mark.parametrize("aug", [None, "heavy"], ids=["run's own (light)", "heavy"])
def test_an_images_tta_probabilities_do_not_depend_on_its_neighbours(lenet_run, kmnist, aug):
    """heavy adds zoom, warp (fastai's coordinate transform) and lighting, each drawn per image too."""
    loaded = load_run(lenet_run.path, cpu=True, tta=TtaSettings(aug=aug))
    x = kmnist.test_x[:70]
    among = predict_probs(loaded, x, tta=True, n=3)
    alone = predict_probs(loaded, x[37:38], tta=True, n=3)
    shuffled = predict_probs(loaded, x[::-1], tta=True, n=3)
    # the same draws: only the model's batched float arithmetic differs (fastai's batch draws differed by ~1e-2)
    np.testing.assert_allclose(alone[0], among[37], atol=1e-6)
    np.testing.assert_allclose(shuffled.flip(0), among, atol=1e-6)
    # and they are augmentations: each pass differs from the clean one, and another seed draws others
    clean, aug, _ = tta_parts(loaded, x, n=3)
    assert (aug - clean).abs().max() > 1e-3
    assert (predict_probs(loaded, x, tta=True, n=3, seed=7) - among).abs().max() > 1e-4


def test_a_png_gets_the_same_tta_probabilities_alone_and_among_other_files(lenet_run, kmnist, tmp_path):
    files = []
    for i in (3, 11, 29):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(kmnist.test_x[i]).save(files[-1])
    common = ["--model", str(lenet_run.path), "--tta", "--tta-n", "3", "--quiet"]

    def probs(*inputs):
        out = tmp_path / "probs.csv"
        r = CliRunner().invoke(app, ["predict", *map(str, inputs), *common, "--probs", str(out)])
        assert r.exit_code == 0, r.output
        return {line.split(",", 1)[0]: line for line in out.read_text().splitlines()[1:]}

    alone = probs(files[1])
    among = probs(*files)
    assert alone["img11.png"] == among["img11.png"]  # the CSV row, byte for byte
    assert len(among) == 3
