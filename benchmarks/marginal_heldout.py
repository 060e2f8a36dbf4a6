"""The marginal channel as it would be built: calibrated on held-out rows, weighted.

benchmarks/marginal_channel.py measured a proxy (ECOD against its own training scores,
in-sample). This measures the design a detector can ship: the marginal statistic
(:class:`anomaly_vae.scoring.marginal.MarginalTails`, ECOD's sum of per-cell tail
surprises) fitted on the detector's own training rows and calibrated on its own
calibration rows (the split a fit makes, ``anomaly_vae.detector.split_rows``), so its
p-value is conformal like log p(x)'s. A record's p-value is the weighted Bonferroni

    p = min(1, p_joint / (1 - w), p_marginal / w),

valid for any dependence between the two tests, ranked with ties broken by log p(x).

The rule, written before any figure of this design was computed:

* the grid is w in {0.2, 0.25, 0.3, 0.35, 0.4, 0.5} (0.2 and 0.5 were seen in the
  in-sample proxy on both halves, so half B is not a perfectly clean check for them);
* choose on half A: among the w whose A figures meet all three of issue 24's per-half
  bars (mean AUROC at least 2 points above IsolationForest's, wins on at least 60% of
  the half's sets, no set more than 10 points below the better of IsolationForest and
  ECOD), the one with the largest A margin over IsolationForest;
* check it on half B against the same three bars, and report the swap (choose on B,
  check on A) beside it;
* it becomes the default only if the w chosen on A meets all three bars on B.

Amended before the second run, after the mixed-type benchmark (not these figures) showed
why: the design as built floors the combined p-value at the larger of the two tests'
scaled floors, max(1 / (1 - w), 1 / w) / (n + 1), so that below what both tests can
resolve rows tie and log p(x) orders them (``TabularDetector._combine``). The rule
above is applied to the floored rankings ("floored w=..."); the unfloored ones of the
first run ("w=...") are kept beside them.

The split, seeds and detector are benchmarks/tabular.py's; IsolationForest's and
ECOD's AUROC and AUPRC come from its cache. Writes benchmarks/results/marginal_heldout.json
and the section "## Tabular: the marginal channel calibrated on held-out rows" of
benchmarks/RESULTS.md.

    python benchmarks/marginal_heldout.py [--datasets celeba vertebral] [--seeds 0 1 2]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

OUT = ROOT / "results" / "marginal_heldout.json"
RESULTS = ROOT / "RESULTS.md"
HEADING = "## Tabular: the marginal channel calibrated on held-out rows"
WEIGHTS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
PEERS = ("IForest", "ECOD")
#: What the probe rows are, after the section's first paragraph.
PROBE_NOTE = (
    " The `probe:` rows (benchmarks/skew_tails.py) are not the built design and not "
    "candidates of the rule: the same fits with ECOD's own tail rule (each column's tail "
    "chosen by its skewness) in place of the two-sided one, at w = 0.35, added after the "
    "choice, for the record."
)


def run_one(path: Path, seed: int) -> dict[str, Any]:
    """AUROC and AUPRC x100 of the default's p-value, the marginal statistic alone and
    each weighted combination, on one set and seed."""
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.model_selection import train_test_split

    from benchmarks.skew_tails import calibrated, probe_scores, rebuilt_channel
    from benchmarks.tabular import _make, ranked

    data = np.load(path, allow_pickle=False)
    x = np.asarray(data["X"], dtype=np.float64)
    y = np.asarray(data["y"]).astype(int)
    x_tr, x_te, _, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    det = _make("anomaly-vae", seed).fit(x_tr)
    scored = det.score(x_te)
    ll = scored["log_likelihood"].to_numpy()
    # ADBench has no text column and no missing cell: log p(x)'s own conformal p-value
    p_joint = det.calibration_.p_values(ll)
    tails, cal_cells = rebuilt_channel(det, x_tr, seed)
    ref = calibrated(tails.statistic(cal_cells), det.alpha)
    cells_te = det.marginal_cells(det.preprocessor_.transform_matrix(x_te))
    stat_te = tails.statistic(cells_te)
    p_marginal = ref.p_values(-stat_te)
    if det.marginal_ is not None:  # the detector's own channel is this one
        np.testing.assert_array_equal(det.marginal_calibration_.reference, ref.reference)
    row: dict[str, Any] = {"set": path.stem.split("_", 1)[1], "seed": seed}
    scores = {"joint_p": ranked(p_joint, ll), "marginal": stat_te}
    # a probe beside the built design: ECOD's tail rule (benchmarks/skew_tails.py)
    probe = probe_scores(det, tails, cal_cells, cells_te, ll)
    scores["skew_alone"], scores["skew floored"] = probe["alone"], probe["combined"]
    floor_n = det.calibration_.n + 1
    for w in WEIGHTS:
        p = np.minimum(1.0, np.minimum(p_joint / (1 - w), p_marginal / w))
        scores[f"w={w}"] = ranked(p, ll)
        # the design as built: below the larger of the two tests' scaled floors, ties
        scores[f"floored w={w}"] = ranked(np.maximum(p, max(1 / (1 - w), 1 / w) / floor_n), ll)
    for name, s in scores.items():
        row[f"auroc:{name}"] = 100 * float(roc_auc_score(y_te, s))
        row[f"auprc:{name}"] = 100 * float(average_precision_score(y_te, s))
    return row


def peer_figures(names: list[str], seeds: list[int]) -> dict[str, dict[str, float]]:
    """{set: {"auroc:IForest": ..., "auprc:ECOD": ...}} x100, means over ``seeds`` from
    benchmarks/tabular.py's cache (sets without every run are left out)."""
    from benchmarks.tabular import OUT as CACHE

    out: dict[str, dict[str, float]] = {}
    for name in names:
        runs = {m: [CACHE / f"{name}__{s}__{m}.json" for s in seeds] for m in PEERS}
        if not all(r.exists() for rs in runs.values() for r in rs):
            continue
        out[name] = {}
        for m, rs in runs.items():
            docs = [json.loads(r.read_text()) for r in rs]
            out[name][f"auroc:{m}"] = 100 * float(np.mean([d["auroc"] for d in docs]))
            out[name][f"auprc:{m}"] = 100 * float(np.mean([d["auprc"] for d in docs]))
    return out


def bars(per: Any, names: list[str], col: str) -> dict[str, Any]:
    """Issue 24's per-half bars for the AUROC column ``col`` over ``names``."""
    sel = per.loc[names]
    better = sel[["auroc:IForest", "auroc:ECOD"]].max(axis=1)
    gap = (sel[f"auroc:{col}"] - better).sort_values()
    margin = float(sel[f"auroc:{col}"].mean() - sel["auroc:IForest"].mean())
    wins = int((sel[f"auroc:{col}"] > sel["auroc:IForest"]).sum())
    return {
        "auroc": float(sel[f"auroc:{col}"].mean()),
        "auprc": float(sel[f"auprc:{col}"].mean()),
        "margin_over_iforest": margin,
        "wins_vs_iforest": wins,
        "sets": len(names),
        "worst_gap": [str(gap.index[0]), float(gap.iloc[0])],
        "over_10_below": gap[gap < -10].index.tolist(),
        "meets": margin >= 2 and wins >= 0.6 * len(names) and float(gap.iloc[0]) >= -10,
    }


def choose(per: Any, on: list[str], prefix: str = "floored ") -> str | None:
    """The rule: among the weights meeting all three bars on ``on``, the largest margin
    (the floored design unless ``prefix`` says otherwise)."""
    found = {f"{prefix}w={w}": bars(per, on, f"{prefix}w={w}") for w in WEIGHTS}
    ok = [k for k, b in found.items() if b["meets"]]
    return max(ok, key=lambda k: found[k]["margin_over_iforest"], default=None)


def report(rows: list[dict[str, Any]], command: str) -> tuple[str, dict[str, Any]]:
    """The RESULTS.md section and the JSON document."""
    import pandas as pd

    from benchmarks.skew_tails import WEIGHT
    from benchmarks.tabular import halves

    df = pd.DataFrame(rows)
    seeds = sorted(df["seed"].unique().tolist())
    per = df.drop(columns="seed").groupby("set").mean()
    peers = pd.DataFrame(peer_figures(sorted(per.index), seeds)).T
    per = per.join(peers, how="inner")
    a, b = halves(sorted(per.index))
    floored = [f"floored w={w}" for w in WEIGHTS]
    cols = ["joint_p", "marginal", *[f"w={w}" for w in WEIGHTS]]
    cols += [c for c in floored if f"auroc:{c}" in per.columns]
    cols += [c for c in ("skew_alone", "skew floored") if f"auroc:{c}" in per.columns]
    doc: dict[str, Any] = {"seeds": seeds, "weights": list(WEIGHTS), "halves": {"A": a, "B": b}}
    doc["figures"] = {
        label: {c: bars(per, names, c) for c in cols}
        for label, names in (("A", a), ("B", b), ("all", sorted(per.index)))
    }
    for label, names in (("A", a), ("B", b), ("all", sorted(per.index))):
        doc["figures"][label]["peers"] = {
            m: {
                "auroc": float(per.loc[names, f"auroc:{m}"].mean()),
                "auprc": float(per.loc[names, f"auprc:{m}"].mean()),
            }
            for m in PEERS
        }
    design = "floored " if f"auroc:{floored[0]}" in per.columns else ""
    on_a, on_b = choose(per, a, design), choose(per, b, design)
    doc["chosen_on_A"], doc["chosen_on_B"] = on_a, on_b
    doc["A_choice_meets_B"] = bool(on_a and doc["figures"]["B"][on_a]["meets"])
    doc["B_choice_meets_A"] = bool(on_b and doc["figures"]["A"][on_b]["meets"])
    lines = [
        HEADING,
        "",
        f"`{command}`",
        "",
        "The marginal channel as a detector would ship it (benchmarks/marginal_heldout.py's "
        "docstring): ECOD's statistic fitted on the detector's own training rows and "
        "calibrated on its own calibration rows, combined with log p(x)'s p-value by the "
        "weighted Bonferroni p = min(1, p_joint / (1 - w), p_marginal / w), ties by log "
        f"p(x). Mean AUROC and AUPRC x100 over seeds {seeds}; peers from the tabular "
        "section's cache. The bars are issue 24's per half: margin over IsolationForest "
        ">= +2, wins >= 60%, no set more than 10 below the better of IsolationForest and "
        "ECOD. The rule that picks w was written before these figures (the docstring); it "
        "applies to the floored design the detector builds (rows below what both tests "
        "resolve tie, ordered by log p(x))."
        + (PROBE_NOTE if "auroc:skew_alone" in per.columns else ""),
        "",
        "| half | ranking | AUROC | margin over IForest | wins vs IForest | worst gap to the better peer | AUPRC | meets the bars |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for label in ("A", "B", "all"):
        for c in cols:
            f = doc["figures"][label][c]
            name = {
                "joint_p": "now (log p(x))",
                "marginal": "marginal alone",
                "skew_alone": "probe: ECOD's tail rule alone",
                "skew floored": f"probe: ECOD's tail rule, floored w={WEIGHT}",
            }.get(c, c)
            lines.append(
                f"| {label} | {name} | {f['auroc']:.2f} | {f['margin_over_iforest']:+.2f} | "
                f"{f['wins_vs_iforest']}/{f['sets']} | {f['worst_gap'][1]:+.1f} "
                f"({f['worst_gap'][0]}) | {f['auprc']:.2f} | {'yes' if f['meets'] else 'no'} |"
            )
        pf = doc["figures"][label]["peers"]
        lines.append(
            f"| {label} | peers | IForest {pf['IForest']['auroc']:.2f}, ECOD "
            f"{pf['ECOD']['auroc']:.2f} | | | | IForest {pf['IForest']['auprc']:.2f}, ECOD "
            f"{pf['ECOD']['auprc']:.2f} | |"
        )

    def verdict(chosen: str | None, other: str, met: bool) -> str:
        if chosen is None:
            return "no w meets the three bars there"
        return f"{chosen}, which {'meets' if met else 'does not meet'} all three on half {other}"

    lines += [
        "",
        f"Chosen on half A: {verdict(on_a, 'B', doc['A_choice_meets_B'])}. "
        f"The swap, chosen on half B: {verdict(on_b, 'A', doc['B_choice_meets_A'])}.",
        "",
    ]
    doc["rows"] = rows
    return "\n".join(lines), doc


def main(argv: list[str] | None = None) -> int:
    from benchmarks.results_md import seeded_probe_main

    return seeded_probe_main(
        argv,
        doc=__doc__,
        script="marginal_heldout.py",
        out=OUT,
        results=RESULTS,
        heading=HEADING,
        run_one=run_one,
        line=lambda row: (
            f"{row['set']:>14} seed {row['seed']}: now {row['auroc:joint_p']:.1f}, marginal "
            f"{row['auroc:marginal']:.1f}, floored w=0.35 {row['auroc:floored w=0.35']:.1f}"
        ),
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
