"""A probe, not a default: what a marginal channel beside log p(x) would do on ADBench.

Issue 24's whole-set bar (no set more than 10 AUROC points below the better of
IsolationForest and ECOD) fails on two sets where a better joint density ranks the
labelled outliers as typical: celeba (the default 60.3 against ECOD's 75.6; a VAE fitted
on the normal rows alone scores 61.7, one with independent columns 75.4) and vertebral
(every method below 50). The issue allows per-column terms beside the joint likelihood
as long as log p(x) stays an honest estimate, as the category channels do for text
columns. This measures the simplest such design before anyone builds it: a record's
p-value is Bonferroni's over two conformal p-values, min(1, 2 min(p_joint, p_marginal)),
ranked with ties broken by log p(x), where

* p_joint is the default detector's own p-value (its calibration rows; ADBench has no
  text columns, so it is log p(x)'s alone);
* p_marginal is ECOD's (independent columns, empirical tails) against ECOD's scores of
  the training rows: in-sample, so a proxy for a channel calibrated on held-out rows.

The split, seeds and detector are benchmarks/tabular.py's. Writes
benchmarks/results/marginal_channel.json and the section "## Tabular: a marginal channel
beside log p(x) (probe)" of benchmarks/RESULTS.md.

    python benchmarks/marginal_channel.py [--datasets celeba vertebral] [--seeds 0 1 2]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

OUT = ROOT / "results" / "marginal_channel.json"
RESULTS = ROOT / "RESULTS.md"
HEADING = "## Tabular: a marginal channel beside log p(x) (probe)"
#: Weighted Bonferroni: the marginal channel's share w of the level, the joint's 1 - w
#: (0.5 is the equal split above). Which w passes half A's bars is read on half A only.
WEIGHTS = (0.2, 0.1, 0.05)


def run_one(path: Path, seed: int) -> dict[str, Any]:
    """AUROC x100 of log p(x), the detector's p-value and the two-channel p-value, and
    ECOD's, on one set and seed."""
    from pyod.models.ecod import ECOD
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    from benchmarks.tabular import _make

    data = np.load(path, allow_pickle=False)
    x = np.asarray(data["X"], dtype=np.float64)
    y = np.asarray(data["y"]).astype(int)
    x_tr, x_te, _, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    scored = _make("anomaly-vae", seed).fit(x_tr).score(x_te)
    ll = scored["log_likelihood"].to_numpy()
    p_joint = scored["p_value"].to_numpy()
    ecod = ECOD().fit(x_tr)
    ref = np.sort(ecod.decision_scores_)
    s_te = ecod.decision_function(x_te)
    # share of training rows at least as outlying, conformal style
    p_marginal = (1 + len(ref) - np.searchsorted(ref, s_te, side="left")) / (len(ref) + 1)
    p_both = np.minimum(1.0, 2 * np.minimum(p_joint, p_marginal))
    weighted = {w: np.minimum(1.0, np.minimum(p_joint / (1 - w), p_marginal / w)) for w in WEIGHTS}

    def auroc(p: np.ndarray) -> float:
        order = np.lexsort((ll, p))  # smallest p first, ties: least likely first
        rank = np.empty(len(p))
        rank[order] = np.arange(len(p))[::-1]
        return 100 * float(roc_auc_score(y_te, rank))

    return {
        "set": path.stem.split("_", 1)[1],
        "seed": seed,
        "log_likelihood": 100 * float(roc_auc_score(y_te, -ll)),
        "joint_p": auroc(p_joint),
        "two_channels": auroc(p_both),
        **{f"w={w}": auroc(p) for w, p in weighted.items()},
        "ECOD": 100 * float(roc_auc_score(y_te, s_te)),
    }


def report(rows: list[dict[str, Any]], command: str) -> tuple[str, dict[str, Any]]:
    """The RESULTS.md section and the JSON document (means over seeds, per set and half)."""
    import pandas as pd

    from benchmarks.tabular import OUT as TABULAR_CACHE
    from benchmarks.tabular import halves

    df = pd.DataFrame(rows)
    weights = [c for c in df.columns if c.startswith("w=")]
    per = df.groupby("set")[["log_likelihood", "joint_p", "two_channels", "ECOD", *weights]].mean()
    seeds = sorted(df["seed"].unique().tolist())
    iforest = {}
    for name in per.index:
        runs = [TABULAR_CACHE / f"{name}__{s}__IForest.json" for s in seeds]
        if all(r.exists() for r in runs):
            iforest[name] = 100 * float(np.mean([json.loads(r.read_text())["auroc"] for r in runs]))
    per["IForest"] = pd.Series(iforest)
    per["change"] = per["two_channels"] - per["joint_p"]
    better = per[["IForest", "ECOD"]].max(axis=1)
    a, b = halves(sorted(per.index))
    doc: dict[str, Any] = {"seeds": seeds, "sets": per.round(4).to_dict(orient="index")}
    lines = [
        HEADING,
        "",
        f"`{command}`",
        "",
        "A design measured before building it (benchmarks/marginal_channel.py's docstring): a "
        "record's p-value is Bonferroni's over the default's own p-value and ECOD's "
        "(independent columns, empirical tails, against ECOD's scores of the training rows), "
        "min(1, 2 min), ties by log p(x). AUROC x100, mean over seeds "
        f"{seeds}; IsolationForest from the tabular section's cache. Issue 24's whole-set bar "
        "asks for no set more than 10 points below the better peer.",
        "",
        "| half | sets | log p(x) | two channels | change | ECOD | IForest | wins vs IForest: now / two channels | worst gap to the better peer: now / two channels |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, names in (("A", a), ("B", b), ("all", sorted(per.index))):
        sel = per.loc[names]
        gap_now = (sel["joint_p"] - better[names]).sort_values()
        gap_two = (sel["two_channels"] - better[names]).sort_values()
        wins_now = int((sel["joint_p"] > sel["IForest"]).sum())
        wins_two = int((sel["two_channels"] > sel["IForest"]).sum())
        doc[label] = {
            "sets": len(names),
            "log_likelihood": float(sel["log_likelihood"].mean()),
            "joint_p": float(sel["joint_p"].mean()),
            "two_channels": float(sel["two_channels"].mean()),
            "ECOD": float(sel["ECOD"].mean()),
            "IForest": float(sel["IForest"].mean()),
            "wins_vs_iforest": [wins_now, wins_two],
            "worst_gap": [
                [gap_now.index[0], float(gap_now.iloc[0])],
                [gap_two.index[0], float(gap_two.iloc[0])],
            ],
            "sets_over_10_below": [
                gap_now[gap_now < -10].index.tolist(),
                gap_two[gap_two < -10].index.tolist(),
            ],
        }
        lines.append(
            f"| {label} | {len(names)} | {sel['joint_p'].mean():.2f} | "
            f"{sel['two_channels'].mean():.2f} | {sel['change'].mean():+.2f} | "
            f"{sel['ECOD'].mean():.2f} | {sel['IForest'].mean():.2f} | {wins_now} / {wins_two} | "
            f"{gap_now.iloc[0]:+.1f} ({gap_now.index[0]}) / {gap_two.iloc[0]:+.1f} "
            f"({gap_two.index[0]}) |"
        )
    if weights:
        lines += [
            "",
            "Weighted: p = min(1, p_joint / (1 - w), p_marginal / w), the marginal channel "
            "given a share w of the level (w = 0.5 is the table above). The rule, written "
            "before these figures: choose on half A the w with the largest A margin over "
            "IsolationForest among those with a margin of at least +2 and no A set more than 10 "
            "below the better peer; check it on half B.",
            "",
            "| w | A mean | A margin over IForest | A worst gap | B mean | B margin | B worst gap |",
            "|---|---:|---:|---|---:|---:|---|",
        ]
        doc["weighted"] = {}
        for w in ["two_channels", *weights]:
            cells = []
            entry = {}
            for label, names in (("A", a), ("B", b)):
                sel = per.loc[names]
                gap = (sel[w] - better[names]).sort_values()
                margin = float(sel[w].mean() - sel["IForest"].mean())
                entry[label] = {"mean": float(sel[w].mean()), "margin": margin,
                                "worst_gap": [gap.index[0], float(gap.iloc[0])]}  # fmt: skip
                cells += [f"{sel[w].mean():.2f}", f"{margin:+.2f}",
                          f"{gap.iloc[0]:+.1f} ({gap.index[0]})"]  # fmt: skip
            key = "0.5" if w == "two_channels" else w.split("=")[1]
            doc["weighted"][key] = entry
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        passing = [
            k for k, e in doc["weighted"].items()
            if e["A"]["margin"] >= 2 and e["A"]["worst_gap"][1] >= -10
        ]  # fmt: skip
        chosen = max(passing, key=lambda k: doc["weighted"][k]["A"]["margin"], default=None)
        doc["weighted_chosen_on_A"] = chosen
        if chosen is None:
            lines += ["", "No w meets both of half A's bars; none is checked on B."]
        else:
            e = doc["weighted"][chosen]["B"]
            ok = e["margin"] >= 2 and e["worst_gap"][1] >= -10
            lines += [
                "",
                f"Chosen on half A: w = {chosen}. On half B, the check: margin {e['margin']:+.2f}, "
                f"worst gap {e['worst_gap'][1]:+.1f} ({e['worst_gap'][0]}): "
                + ("both bars met." if ok else "not both bars met."),
            ]
    moved = per["change"].sort_values()
    margin = {
        label: (
            doc[label]["joint_p"] - doc[label]["IForest"],
            doc[label]["two_channels"] - doc[label]["IForest"],
        )
        for label in ("A", "B")
    }
    over = doc["all"]["sets_over_10_below"]
    lines += [
        "",
        "Largest changes per set: "
        + ", ".join(f"{n} {v:+.1f}" for n, v in moved.head(5).items())
        + "; "
        + ", ".join(f"{n} {v:+.1f}" for n, v in moved.tail(5)[::-1].items())
        + ".",
        "",
        f"Sets more than 10 points below the better peer: now {', '.join(over[0]) or 'none'}; "
        f"with two channels {', '.join(over[1]) or 'none'}. Mean AUROC margin over "
        f"IsolationForest (issue 24's first bar asks +2 on each half): half A "
        f"{margin['A'][0]:+.2f} now, {margin['A'][1]:+.2f} with two channels; half B "
        f"{margin['B'][0]:+.2f}, {margin['B'][1]:+.2f}. The channel ranks first the rows "
        "whose columns sit in their tails: what the labels of celeba and vertebral reward, "
        "and what tables whose outliers are joint ones punish. Not built: at these figures it "
        "trades one bar for another.",
        "",
    ]
    doc["rows"] = rows
    return "\n".join(lines), doc


def main(argv: list[str] | None = None) -> int:
    from benchmarks.results_md import seeded_probe_main

    return seeded_probe_main(
        argv,
        doc=__doc__,
        script="marginal_channel.py",
        out=OUT,
        results=RESULTS,
        heading=HEADING,
        run_one=run_one,
        line=lambda row: (
            f"{row['set']:>14} seed {row['seed']}: log p(x) {row['log_likelihood']:.1f}, "
            f"two channels {row['two_channels']:.1f}, ECOD {row['ECOD']:.1f}"
        ),
        report=report,
    )


if __name__ == "__main__":
    sys.exit(main())
