"""``anomaly-vae images ...`` end to end on small generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly_vae.cli import main
from tests.test_image_detector import squares


def test_images_commands(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "train.npy", squares(300, 0))
    test = np.concatenate(
        [squares(40, 1), np.random.default_rng(0).integers(0, 256, (8, 1, 16, 16)).astype(np.uint8)]
    )
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "labels.npy", np.r_[np.zeros(40, int), np.ones(8, int)])
    b = str(tmp_path / "bundle")
    assert main(["--quiet", "images", "train", str(tmp_path / "train.npy"), "--out", b,
                 "--max-epochs", "8", "--latent-dim", "8", "--k", "16"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_images"] == 300
    assert main(["images", "score", b, str(tmp_path / "test.npy"), "--out", str(tmp_path / "s.csv"),
                 "--heatmaps", str(tmp_path / "heat")]) == 0  # fmt: skip
    scores = pd.read_csv(tmp_path / "s.csv")
    assert len(scores) == 48 and {"log_likelihood", "bits_per_dim", "p_value"} <= set(
        scores.columns
    )
    capsys.readouterr()
    assert main(["images", "evaluate", b, str(tmp_path / "test.npy"), "--labels",
                 str(tmp_path / "labels.npy"), "--plot", str(tmp_path / "eval.png")]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["auroc"] > 0.95
    for args, name in (
        (["sample", b, "-n", "16"], "sample.png"),
        (["reconstruct", b, str(tmp_path / "test.npy"), "-n", "8"], "rec.png"),
        (["traverse", b, str(tmp_path / "test.npy"), "--dims", "4", "--steps", "5"], "trav.png"),
    ):
        assert main(["images", *args, "--out", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 16 and im.size[1] >= 16
    with Image.open(tmp_path / "trav.png") as im:  # 5 steps across, 4 dimensions down
        assert im.size == (2 + 5 * 18, 2 + 4 * 18)
    assert (tmp_path / "heat" / "heatmaps.png").is_file()
    # bad input names the file
    (tmp_path / "junk.npy").write_bytes(b"junk")
    assert (
        main(["images", "score", b, str(tmp_path / "junk.npy"), "--out", str(tmp_path / "x.csv")])
        == 2
    )
    assert "junk.npy" in capsys.readouterr().err


def test_images_train_complexity_weight(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "train.npy", squares(200, 0))
    b = tmp_path / "bundle"
    assert main(["--quiet", "images", "train", str(tmp_path / "train.npy"), "--out", str(b),
                 "--score", "complexity", "--complexity-weight", "fit", "--max-epochs", "3",
                 "--latent-dim", "4", "--k", "8"]) == 0  # fmt: skip
    scorer = json.loads((b / "calibration.json").read_text())["scorer"]
    assert scorer["complexity_weight"] >= 0
    from anomaly_vae.image_detector import ImageDetector

    assert ImageDetector.load(b).complexity_weight_ == scorer["complexity_weight"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["images", "train", str(tmp_path / "train.npy"), "--out", str(b),
              "--score", "complexity", "--complexity-weight", "-2"])  # fmt: skip
    assert exc.value.code == 2
    assert "expected 'fit' or a number >= 0, got '-2'" in capsys.readouterr().err


def test_images_train_warns_of_unscaled_pixels_and_nothing_else(tmp_path: Path) -> None:
    """Integers 0..16 (scikit-learn's digits' scale) get the scale warning with its fix on
    stderr; Lightning's own deprecation notices are not the user's to read."""
    import subprocess
    import sys

    np.save(tmp_path / "dim.npy", (squares(60, 0) // 255 * 16).astype(np.int64))
    # a process of its own: pytest's warning filters would hide what a user sees
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from anomaly_vae.cli import main; sys.exit(main())",
         "images", "train", str(tmp_path / "dim.npy"), "--out", str(tmp_path / "b"),
         "--max-epochs", "1", "--latent-dim", "4", "--k", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert "warning: the brightest training pixel is 16 of 255" in err
    assert "rescale them to 0..255 (e.g. images * 255 // 16)" in err
    assert "LeafSpec" not in err
