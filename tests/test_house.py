"""The shape of the house: what the scoring path imports, what the wheel installs, and
what a core-only install says when a command needs an extra."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("sklearn", "pytorch_lightning", "lightning")


def _loaded_after(code: str, cwd: Path) -> list[str]:
    """The heavy modules loaded after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, check=True
    )
    return eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import anomaly_vae.service.app",
        "from anomaly_vae import TabularDetector; TabularDetector",
        "from anomaly_vae import ImageDetector; ImageDetector",
        "import anomaly_vae.pipelines.batch",
    ],
)
def test_scoring_path_imports_neither_lightning_nor_sklearn(code, tmp_path):
    assert _loaded_after(code, tmp_path) == []


def test_score_command_imports_neither_lightning_nor_sklearn(fitted, mixed_test, tmp_path):
    bundle = fitted.save(tmp_path / "bundle")
    data = tmp_path / "rows.csv"
    mixed_test[0].to_csv(data, index=False)
    out = tmp_path / "scores.csv"
    code = (
        "from anomaly_vae.cli import main\n"
        f"assert main(['--quiet', 'score', {str(bundle)!r}, {str(data)!r}, '--out', {str(out)!r}]) == 0"
    )
    assert _loaded_after(code, tmp_path) == []
    assert out.stat().st_size > 0


def test_fit_still_trains_through_lightning(tmp_path):
    """The probe above can fail: fitting does load Lightning."""
    code = (
        "import numpy as np\nfrom anomaly_vae import TabularDetector\n"
        "TabularDetector(max_epochs=1, k=2).fit(np.random.default_rng(0).normal(size=(40, 2)))"
    )
    assert "pytorch_lightning" in _loaded_after(code, tmp_path)


def _package_dirs() -> dict[str, Path]:
    """Every package of the repository under the name it installs as."""
    mapping = {"anomaly_vae": "anomaly_vae", "service": "anomaly_vae.service",
               "pipelines": "anomaly_vae.pipelines"}  # fmt: skip
    out = {}
    for top, name in mapping.items():
        for init in sorted((ROOT / top).rglob("__init__.py")):
            rel = init.parent.relative_to(ROOT / top).parts
            out[".".join((name, *rel))] = init.parent
    return out


def test_the_wheel_installs_only_the_projects_own_name():
    """pyproject lists every package, each under anomaly_vae: nothing claims a top-level
    ``service`` or ``pipelines``, and no subpackage is left out of the wheel."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = config["packages"]
    assert all(p == "anomaly_vae" or p.startswith("anomaly_vae.") for p in packages)
    assert sorted(packages) == sorted(_package_dirs())
    assert config["package-dir"] == {
        "anomaly_vae.service": "service",
        "anomaly_vae.pipelines": "pipelines",
    }


_BLOCK = """
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {names!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Absent())
from anomaly_vae.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("argv", "absent", "extra"),
    [
        (["models", "list", "wdbc", "--store", "mlruns"], {"mlflow"}, "service"),
        (["serve", "--bundle", "b"], {"fastapi", "uvicorn", "pydantic_settings"}, "service"),
        (["register", "b", "--name", "x"], {"mlflow"}, "service"),
    ],
)
def test_core_only_install_names_the_extra(argv, absent, extra, fitted, tmp_path):
    """Without the extra's packages (made unimportable here), an MLflow or service command
    ends in one line naming the extra, exit 2, not a traceback."""
    bundle = str(fitted.save(tmp_path / "b"))
    argv = [bundle if a == "b" else a for a in argv]
    code = _BLOCK.format(names=sorted(absent))
    res = subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert f"pip install 'anomaly-vae[{extra}]'" in lines[0]
    assert "Traceback" not in res.stderr
