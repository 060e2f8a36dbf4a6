"""Bundle signing: checksums catch corruption, a signature catches a consistent edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from anomaly_vae import TabularDetector, load_detector
from anomaly_vae.bundle import sign_bundle, verify_signature
from anomaly_vae.cli import main
from anomaly_vae.exceptions import BundleError
from tests.helpers import edit_bundle_document

KEY = "k" * 20 + "-a-test-signing-key"


def _edit_consistently(bundle: Path) -> None:
    """What an attacker with write access does: change the threshold, then recompute
    the file's sha256 in the manifest so the checksums still agree."""
    edit_bundle_document(bundle, "calibration.json", lambda cal: cal.update(threshold=-1e9))


def test_a_signed_bundle_loads_and_a_consistent_edit_is_refused(fitted, tmp_path):
    bundle = fitted.save(tmp_path / "b", signing_key=KEY)
    assert load_detector(bundle, signing_key=KEY).calibration_.n == fitted.calibration_.n
    with pytest.raises(BundleError, match="does not verify"):
        TabularDetector.load(bundle, signing_key="another-key-of-at-least-32-characters")
    _edit_consistently(bundle)
    assert TabularDetector.load(bundle).calibration_.threshold == -1e9  # checksums pass
    with pytest.raises(BundleError, match="does not verify"):
        TabularDetector.load(bundle, signing_key=KEY)


def test_unsigned_bundles_and_short_keys_are_refused(fitted, tmp_path):
    bundle = fitted.save(tmp_path / "b")
    with pytest.raises(BundleError, match="not signed"):
        load_detector(bundle, signing_key=KEY)
    with pytest.raises(BundleError, match="at least 32 characters"):
        sign_bundle(bundle, "short")
    sign_bundle(bundle, KEY)
    verify_signature(bundle, KEY)
    (bundle / "signature.json").write_text("{not json")
    with pytest.raises(BundleError, match="not a signature document"):
        verify_signature(bundle, KEY)


def test_sign_command(fitted, tmp_path, monkeypatch, capsys):
    bundle = fitted.save(tmp_path / "b")
    monkeypatch.delenv("ANOMALY_VAE_SIGNING_KEY", raising=False)
    assert main(["sign", str(bundle)]) == 2
    assert "ANOMALY_VAE_SIGNING_KEY" in capsys.readouterr().err
    monkeypatch.setenv("ANOMALY_VAE_SIGNING_KEY", KEY)
    assert main(["sign", str(bundle)]) == 0
    assert main(["sign", "--verify", str(bundle)]) == 0
    _edit_consistently(bundle)
    assert main(["sign", "--verify", str(bundle)]) != 0
    assert "does not verify" in capsys.readouterr().err
