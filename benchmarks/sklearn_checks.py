"""scikit-learn's ``check_estimator`` on both detectors: which of its checks pass.

    python benchmarks/sklearn_checks.py            # prints a table, writes results JSON

Each check is run with ``on_fail=None`` (scikit-learn >= 1.6), so one failure does not
hide the rest. The detectors are made small (one epoch, K=2) so the whole run takes a
few minutes; what is checked is the contract, not the model. The image detector takes
uint8 image arrays [N, C, H, W], which scikit-learn's checks (2-D float tables) cannot
give it, so for it only the construction, parameter and cloning checks apply; the
others are reported as not applicable. Writes benchmarks/results/sklearn_checks.json.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

#: The checks that only look at construction, parameters and cloning: the ones that
#: apply to a detector whose input is not a 2-D table.
CONTRACT_CHECKS = (
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_dont_overwrite_parameters",
    "check_estimator_repr",
    "check_estimator_cloneable",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_mixin_order",
)


def run(estimator: Any, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    from sklearn.utils.estimator_checks import check_estimator

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(estimator, on_fail=None)
    for r in results:
        name = r["check_name"]
        applies = only is None or name in only
        status = r["status"] if applies else "not applicable"
        reason = ""
        if r.get("exception") is not None and status == "failed":
            first = (str(r["exception"]).splitlines() or [""])[0][:160]
            reason = f"{type(r['exception']).__name__}: {first}"
        rows.append({"check": name, "status": status, "reason": reason})
    return rows


def main() -> int:
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    from anomaly_vae import ImageDetector, TabularDetector

    report = {
        "TabularDetector": run(TabularDetector(max_epochs=1, k=2)),
        "ImageDetector": run(ImageDetector(max_epochs=1, k=2), only=CONTRACT_CHECKS),
    }
    summary = {name: dict(Counter(r["status"] for r in rows)) for name, rows in report.items()}
    out = ROOT / "results" / "sklearn_checks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "checks": report}, indent=1) + "\n")
    for name, rows in report.items():
        print(f"## {name}: {summary[name]}")
        for r in rows:
            if r["status"] != "passed":
                print(f"- {r['check']}: {r['status']} {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
