"""The drift report: a self-contained HTML page (plots embedded as PNG, no external
assets) and its JSON twin with every figure.

Plots: the score distribution against the reference (bin shares and cumulative shares at
the reference's ventiles), a QQ plot of the window's conformal p-values against the
uniform with a 95% band, the outlier rate with its interval against alpha, small
multiples of the most drifted features, and the latent means of window and reference
on their first two principal axes.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_vae.drift.check import DriftReport, WindowStats

#: Most drifted features drawn as small multiples.
SMALL_MULTIPLES = 6


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _shares(counts: Any) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    return c / max(c.sum(), 1.0)


def _score_plot(report: DriftReport) -> str:
    import matplotlib.pyplot as plt

    s = report.signals["scores"]
    ref, win = _shares(s["reference_counts"]), _shares(s["window_counts"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    x = np.arange(len(ref))
    a.bar(x - 0.2, ref, 0.4, label="reference (calibration)", color="#8da0cb")
    a.bar(x + 0.2, win, 0.4, label="window", color="#fc8d62")
    a.set_xlabel("score bin (reference ventiles; left = least normal)")
    a.set_ylabel("share of records")
    a.legend(fontsize=8)
    a.set_title("score distribution")
    b.step(x, np.cumsum(ref), where="post", label="reference")
    b.step(x, np.cumsum(win), where="post", label="window")
    b.set_xlabel("score bin")
    b.set_ylabel("cumulative share")
    b.set_title("score ECDF at the reference's ventiles")
    b.legend(fontsize=8)
    return _png(fig)


def _pvalue_qq(report: DriftReport) -> str:
    """Conformal p-values are uniform on data like the calibration set; the reference's
    score ventiles are p-value twentieths, so the window's bin shares are its p-value
    histogram."""
    import matplotlib.pyplot as plt

    s = report.signals["scores"]
    win = _shares(s["window_counts"])
    ref = _shares(s["reference_counts"])
    # bins run from least normal (small p) upward: cumulative share = P(p <= u)
    expected = np.cumsum(ref)
    observed = np.cumsum(win)
    # both samples are finite: the band holds the window's and the reference's noise
    n_win, n_ref = max(report.n, 1), max(float(np.sum(s["reference_counts"])), 1.0)
    spread = np.clip(expected * (1 - expected), 0.0, None) * (1 / n_win + 1 / n_ref)
    band = 1.96 * np.sqrt(spread)
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.fill_between(expected, expected - band, expected + band, color="#dddddd", label="95% band")
    ax.plot([0, 1], [0, 1], color="#777777", lw=1)
    ax.plot(expected, observed, "o-", ms=3, color="#e7298a", label="window")
    ax.set_xlabel("uniform quantile (reference share)")
    ax.set_ylabel("window share with p <= quantile")
    ax.set_title("conformal p-values, QQ")
    ax.legend(fontsize=8)
    return _png(fig)


def _outlier_plot(report: DriftReport) -> str:
    import matplotlib.pyplot as plt

    o = report.signals["outlier_rate"]
    lo, hi = o["rate_ci95"]
    fig, ax = plt.subplots(figsize=(4.2, 2.2))
    ax.errorbar([o["rate"]], [0], xerr=[[o["rate"] - lo], [hi - o["rate"]]], fmt="o", capsize=6)
    ax.axvline(o["alpha"], color="#d95f02", ls="--", label=f"alpha = {o['alpha']}")
    ax.set_yticks([])
    ax.set_xlim(0, max(hi, o["alpha"]) * 1.5 + 1e-3)
    ax.set_xlabel("outlier rate (95% interval)")
    ax.legend(fontsize=8)
    return _png(fig)


def _feature_plots(report: DriftReport) -> str:
    import matplotlib.pyplot as plt

    rows = report.features[:SMALL_MULTIPLES]
    if not rows:
        return ""
    cols = min(3, len(rows))
    lines = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4 * cols, 2.6 * lines), squeeze=False)
    for ax, row in zip(axes.ravel(), rows, strict=False):
        ref, win = _shares(row["reference_counts"]), _shares(row["window_counts"])
        x = np.arange(len(ref))
        ax.bar(x - 0.2, ref, 0.4, color="#8da0cb", label="reference")
        ax.bar(x + 0.2, win, 0.4, color="#fc8d62", label="window")
        if row.get("levels"):
            ax.set_xticks(x, [str(v)[:8] for v in row["levels"]], rotation=45, fontsize=7)
        title = f"{row['feature']} ({row['verdict']}, q={row['q_value']:.2g})"
        ax.set_title(title, fontsize=9)
    for ax in axes.ravel()[len(rows) :]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _latent_plot(report: DriftReport, stats: WindowStats | None) -> str:
    import matplotlib.pyplot as plt

    if stats is None or not len(stats.latent_sample):
        return ""
    ref = np.asarray(stats.reference["latent"]["sample"], dtype=np.float64)
    win = stats.latent_sample
    center = ref.mean(0)
    _, _, vt = np.linalg.svd(ref - center, full_matrices=False)
    axes2 = vt[:2].T if vt.shape[0] >= 2 else np.eye(ref.shape[1])[:, :2]
    pr, pw = (ref - center) @ axes2, (win - center) @ axes2
    fig, ax = plt.subplots(figsize=(4.2, 4))
    ax.scatter(pr[:, 0], pr[:, 1], s=6, alpha=0.5, label="reference", color="#8da0cb")
    ax.scatter(pw[:, 0], pw[:, 1], s=6, alpha=0.5, label="window", color="#fc8d62")
    ax.set_title("latent means, first two principal axes")
    ax.legend(fontsize=8)
    return _png(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def _signal_table(report: DriftReport) -> str:
    head = "<tr><th>signal</th><th>test</th><th>statistic</th><th>p</th><th>p (Holm)</th><th>effect</th><th>margin</th><th>verdict</th></tr>"
    body = []
    for name, s in report.signals.items():
        body.append(
            f"<tr class='{s['verdict']}'><td>{name}</td><td>{html.escape(s['test'])}</td>"
            f"<td>{_fmt(s['statistic'])}</td><td>{_fmt(s['p_value'])}</td><td>{_fmt(s['p_holm'])}</td>"
            f"<td>{_fmt(s['effect'])} <small>{html.escape(s['effect_unit'])}</small></td>"
            f"<td>{_fmt(s['margin'])}</td><td>{s['verdict']}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _feature_table(report: DriftReport) -> str:
    if not report.features:
        return ""
    head = (
        "<tr><th>feature</th><th>kind</th><th>chi-square</th><th>p</th><th>q (BH)</th>"
        "<th>effect</th><th>PSI</th><th>JS</th><th>missing</th><th>contribution shift (nats)</th>"
        "<th>verdict</th></tr>"
    )
    body = []
    for f in report.features:
        c = f.get("contribution", {})
        body.append(
            f"<tr class='{f['verdict']}'><td>{html.escape(f['feature'])}</td><td>{f['kind']}</td>"
            f"<td>{_fmt(f['statistic'])}</td><td>{_fmt(f['p_value'])}</td><td>{_fmt(f['q_value'])}</td>"
            f"<td>{_fmt(f['effect'])}</td><td>{_fmt(f['psi'])}</td><td>{_fmt(f['js_distance'])}</td>"
            f"<td>{_fmt(f['missing_rate'])}</td>"
            f"<td>{_fmt(c.get('effect', ''))} (p {_fmt(c.get('p_value', ''))})</td><td>{f['verdict']}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}
tr.drift td{background:#fde0dd}.verdict{font-size:1.3em;padding:.4em .8em;display:inline-block}
.v-drift{background:#d7301f;color:#fff}.v-no_drift{background:#1a9850;color:#fff}
.v-too_few_rows{background:#fdae61}
img{max-width:100%}
"""


def render_html(report: DriftReport, stats: WindowStats | None = None, title: str = "") -> str:
    """The report as one self-contained HTML page."""
    img = lambda b64: f"<img alt='' src='data:image/png;base64,{b64}'>" if b64 else ""  # noqa: E731
    fired = "".join(
        f"<li>{html.escape(f['signal'])}: Holm p = {f['p_holm']:.3g}, effect {f['effect']:.3g} "
        f"(margin {f['margin']:.3g})</li>"
        for f in report.fired
    )
    model = html.escape(json.dumps(report.model))
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>drift report {html.escape(title)}</title><style>{_CSS}</style></head><body>
<h1>Drift report {html.escape(title)}</h1>
<p><span class="verdict v-{report.verdict}">{report.verdict.replace("_", " ")}</span>
&nbsp; {report.n:,} records, level {report.level}; model {model}</p>
<p><small>{html.escape(report.rule)}. A window under {report.min_rows} records without an
alarm is reported as too small, never as drift-free.</small></p>
{"<h2>What fired</h2><ul>" + fired + "</ul>" if fired else ""}
<h2>Signals</h2>{_signal_table(report)}
<h2>Scores against the reference</h2>{img(_score_plot(report))}
<p>Mean score shift {report.signals["scores"]["mean_shift"]:.4g}
(95% interval {report.signals["scores"]["mean_shift_ci95"][0]:.4g} to
{report.signals["scores"]["mean_shift_ci95"][1]:.4g}), in the calibrated score's units.</p>
{img(_pvalue_qq(report))} {img(_outlier_plot(report))}
{"<h2>Features</h2>" + _feature_table(report) + img(_feature_plots(report)) if report.features else ""}
<h2>Latent codes</h2>{img(_latent_plot(report, stats))}
</body></html>
"""


def write_report(
    report: DriftReport, out: str | Path, stats: WindowStats | None = None, title: str = ""
) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``out``; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    page = root / "report.html"
    doc = root / "report.json"
    page.write_text(render_html(report, stats, title))
    doc.write_text(json.dumps(report.to_dict(), indent=1, default=float) + "\n")
    return page, doc
