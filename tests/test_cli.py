"""The command line: every command end to end on a tiny CSV, and its errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anomaly_vae.cli import COMMANDS, main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mixed_train):
    root = tmp_path_factory.mktemp("cli")
    data = root / "train.csv"
    mixed_train.assign(label=0).to_csv(data, index=False)
    bundle = root / "bundle"
    rc = main(
        [
            "--quiet",
            "train",
            str(data),
            "--out",
            str(bundle),
            "--id-column",
            "id",
            "--drop",
            "label",
            "--k",
            "8",
            "--min-sigma",
            "0.05",
        ]
    )
    assert rc == 0
    return root, bundle


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: anomaly-vae " + command in capsys.readouterr().out


def test_score_and_evaluate(trained, mixed_test, capsys):
    root, bundle = trained
    frame, y = mixed_test
    data = root / "test.parquet"
    frame.assign(is_outlier=y.astype(int)).to_parquet(data)
    out = root / "scores.parquet"
    assert (
        main(
            [
                "--quiet",
                "score",
                str(bundle),
                str(data),
                "--out",
                str(out),
                "--allow-extra",
                "--explain",
                "2",
            ]
        )
        == 0
    )
    scores = pd.read_parquet(out)
    assert {"id", "log_likelihood", "p_value", "is_outlier", "top1_feature", "top2_feature"} <= set(
        scores.columns
    )
    assert len(scores) == len(frame)
    capsys.readouterr()
    plot = root / "eval.png"
    assert (
        main(
            [
                "--quiet",
                "evaluate",
                str(bundle),
                str(data),
                "--labels",
                "is_outlier",
                "--plot",
                str(plot),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 300 and metrics["n_outliers"] == 15
    assert metrics["auroc"] > 0.9
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sample_and_encode(trained, mixed_train, capsys):
    root, bundle = trained
    assert main(["sample", str(bundle), "-n", "4"]) == 0
    text = capsys.readouterr().out.strip().splitlines()
    assert text[0] == "a,b,c,color,flag" and len(text) == 5
    data = root / "enc.csv"
    mixed_train.head(5).to_csv(data, index=False)
    out = root / "z.csv"
    assert main(["encode", str(bundle), str(data), "--out", str(out)]) == 0
    z = pd.read_csv(out)
    assert z.columns[0] == "id" and len(z) == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["score", "{bundle}", "{root}/nope.csv", "--out", "{root}/o.csv"],
            "no such file: '.*nope.csv'",
        ),
        (
            ["score", "{root}", "{root}/train.csv", "--out", "{root}/o.csv"],
            "manifest.json is missing",
        ),
        (
            ["score", "{bundle}", "{root}/train.csv", "--out", "{root}/o.csv"],
            r"unexpected columns: \['label'\]",
        ),
        (
            ["evaluate", "{bundle}", "{root}/train.csv", "--labels", "zzz"],
            "labels column 'zzz' is not in",
        ),
        (
            ["evaluate", "{bundle}", "{root}/train.csv", "--labels", "label"],
            "labels column 'label' has only one class",
        ),
        (
            ["train", "{root}/train.csv", "--out", "{root}/b2", "--drop", "nope"],
            r"--drop names columns not in .*: \['nope'\]",
        ),
        (
            ["score", "{bundle}", "{root}/train.txt", "--out", "{root}/o.csv"],
            "unsupported table format '.txt'",
        ),
        (
            ["train", "{root}/train.csv", "--out", "{root}/b3", "--winsorize", "0.7"],
            r"winsorize must be in \[0, 0.5\), got 0.7",
        ),
    ],
)
def test_bad_input_exits_2_with_a_named_culprit(trained, args, message, capsys):
    root, bundle = trained
    (root / "train.txt").write_text("x")
    argv = [a.format(root=root, bundle=bundle) for a in args]
    assert main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert pytest.importorskip("re").search(message, err), err


@pytest.mark.integration
def test_demo_registers_and_prints_curl_examples_for_its_port(tmp_path, capsys, monkeypatch):
    """The README's main job up to the service: trains on scikit-learn's breast-cancer
    data, reports, registers in a sqlite MLflow store, and prints curl lines for --port."""
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "mlruns"
    rc = main(["--quiet", "demo", "--workdir", "demo", "--register", "wdbc",
               "--store", str(store), "--port", "8123"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "held-out: AUROC" in out and "registered wdbc version 1 as @champion" in out
    assert "curl -s localhost:8123/readyz" in out and "localhost:8000" not in out
    assert (tmp_path / "demo" / "example_request.json").exists()


@pytest.mark.parametrize(
    ("flag", "default", "bad", "message"),
    [
        ("--min-sigma", "auto", "wide", "expected 'auto', 'scott' or a number >= 0, got 'wide'"),
        ("--discrete-likelihood", "ordinal", "poisson", "invalid choice: 'poisson'"),
    ],
)
def test_train_flag_defaults_and_usage_errors(trained, capsys, flag, default, bad, message):
    """--min-sigma defaults to 'auto' and takes a rule or a number >= 0; --discrete-likelihood
    defaults to ordinal; anything else is a usage error (exit 2) that says why."""
    from anomaly_vae.cli import _parser

    root, _ = trained
    args = _parser().parse_args(["train", str(root / "train.csv"), "--out", "x"])
    assert getattr(args, flag[2:].replace("-", "_")) == default
    with pytest.raises(SystemExit) as exc:
        main(["train", str(root / "train.csv"), "--out", "x", flag, bad])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_discrete_likelihood_choices_are_the_detectors():
    """Every way the detector models discrete levels is a valid CLI choice, and parses
    to itself, or a valid detector option would be a usage error."""
    from anomaly_vae.cli import _parser
    from anomaly_vae.detector import DISCRETE_LIKELIHOODS

    for choice in DISCRETE_LIKELIHOODS:
        args = _parser().parse_args(
            ["train", "d.csv", "--out", "b", "--discrete-likelihood", choice]
        )
        assert args.discrete_likelihood == choice


def test_category_channels_are_on_unless_turned_off():
    from anomaly_vae.cli import _parser

    on = _parser().parse_args(["train", "d.csv", "--out", "b"])
    off = _parser().parse_args(["train", "d.csv", "--out", "b", "--no-category-channels"])
    assert on.category_channels is True and off.category_channels is False


@pytest.mark.parametrize(
    ("command", "detector"),
    [
        (["train", "d.csv", "--out", "b"], "TabularDetector"),
        (["images", "train", "d", "--out", "b"], "ImageDetector"),
    ],
)
def test_flag_defaults_are_the_detectors(command, detector):
    """A flag left unset trains the detector the library's defaults would: the parsed
    default of every flag named like a constructor argument is that argument's default."""
    import inspect

    import anomaly_vae
    from anomaly_vae.cli import _parser

    params = inspect.signature(getattr(anomaly_vae, detector)).parameters
    args = vars(_parser().parse_args(command))
    shared = {name for name in args if name in params}
    assert {"beta", "k", "alpha", "seed"} <= shared
    for name in shared:
        value = args[name]
        if name == "devices":
            value = int(value)
        assert value == params[name].default, name


def test_min_sigma_words_are_the_detectors_rules():
    """Every floor rule the detector takes by name parses, and parses to itself."""
    from anomaly_vae.cli import _min_sigma
    from anomaly_vae.detector import MIN_SIGMA_RULES

    assert [_min_sigma(w) for w in MIN_SIGMA_RULES] == list(MIN_SIGMA_RULES)
    assert _min_sigma("0.5") == 0.5
