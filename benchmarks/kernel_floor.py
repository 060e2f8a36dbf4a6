"""How fast a kernel held to the reference's bits can be: the share of the fused
kernel's time spent in the model's own float32 arithmetic.

Issue 25 asks for a scoring kernel at least 2x the reference's pooled rows/s with
results equal to the reference's within 1e-9 nats. In float32 one rounding step of a
per-feature term is 1e-7 nats or more, so that equality holds only when every float32
operation of the encoder, the decoder and the likelihood terms runs as the reference
runs it (the fused kernel is tested to the bit). What a faster kernel can change is
everything else: the bookkeeping around those calls (the log-sum-exp in float64, the
sample draws, copies and concatenations) and the rows per pass where those give the same
bits.

For each set (the seed-0 split of benchmarks/tabular.py, the default detector, at most
4,096 test rows encoded once, K = 64, no contributions) this times, in one process and
alternating, the reference kernel at its 64-row passes and the fused kernel at the rows
per pass the library gives the model, and the time the fused kernel spends inside the
model's ``encode`` and ``feature_log_prob`` (best of ``--repeats`` calls each). If
every other step took no time at all, the fused kernel would run at ``fused / model``
of its speed: the *ceiling*. Pooled over the sets as benchmarks/kernel.py pools them
(total rows over total seconds), the ceiling on the ratio to the reference is
``sum(reference s) / sum(model s)``.

Writes benchmarks/results/kernel_floor.json and the section "## Scoring kernel: the
model's own arithmetic" of benchmarks/RESULTS.md.

    python benchmarks/kernel_floor.py [--datasets celeba campaign] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

OUT = ROOT / "results" / "kernel_floor.json"
RESULTS = ROOT / "RESULTS.md"
K = 64
MAX_ROWS = 4096
HEADING = "## Scoring kernel: the model's own arithmetic"


def measure(path: Path, repeats: int) -> dict[str, Any]:
    """Reference and fused seconds on one set, and the fused kernel's seconds inside the
    model's own calls (encode, feature_log_prob)."""
    from sklearn.model_selection import train_test_split

    from anomaly_vae.scoring.iwae import ImportanceSampler
    from benchmarks.tabular import _make

    name = path.stem.split("_", 1)[1]
    data = np.load(path, allow_pickle=False)
    x = np.asarray(data["X"], dtype=np.float64)
    y = np.asarray(data["y"]).astype(int)
    x_tr, x_te, _, _ = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    det = _make("anomaly-vae", 0).fit(x_tr)
    arrays = det.encode_rows(x_te[:MAX_ROWS])
    net = det.net_
    encode, log_prob = net.encode, net.feature_log_prob
    inside = [0.0]

    def timed(call: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            out = call(*args, **kwargs)
            inside[0] += time.perf_counter() - t0
            return out

        return wrapped

    samplers = {
        "reference": ImportanceSampler(K, seed=0, row_chunk=64, kernel="reference"),
        "fused": ImportanceSampler(K, seed=0),
    }
    best: dict[str, tuple[float, float]] = {key: (np.inf, np.inf) for key in samplers}
    results = {}
    for key, sampler in samplers.items():  # warm: first-call costs, short-pass verdicts
        det.sampler_ = sampler
        results[key] = det.score_encoded(arrays)
    same = (
        results["reference"].log_likelihood.tobytes() == results["fused"].log_likelihood.tobytes()
    )
    for _ in range(repeats):
        for key, sampler in samplers.items():
            det.sampler_ = sampler
            net.encode, net.feature_log_prob = timed(encode), timed(log_prob)
            inside[0] = 0.0
            t0 = time.perf_counter()
            det.score_encoded(arrays)
            total = time.perf_counter() - t0
            del net.encode, net.feature_log_prob  # the class's own methods again
            best[key] = min(best[key], (total, inside[0]))
    fused, model = best["fused"]
    return {
        "set": name,
        "rows": int(arrays.num.shape[0]),
        "columns": int(x.shape[1]),
        "bits_equal": bool(same),
        "reference_s": best["reference"][0],
        "fused_s": fused,
        "model_s": model,
        "model_share": model / fused,
        "ratio": best["reference"][0] / fused,
        "ceiling_ratio": best["reference"][0] / model,
    }


def report(rows: list[dict[str, Any]], command: str) -> tuple[str, dict[str, Any]]:
    """The RESULTS.md section and the JSON document."""
    ref = sum(r["reference_s"] for r in rows)
    fused = sum(r["fused_s"] for r in rows)
    model = sum(r["model_s"] for r in rows)
    head = {
        "sets": len(rows),
        "pooled_ratio": ref / fused,
        "pooled_model_share": model / fused,
        "pooled_ceiling_ratio": ref / model,
        "model_share_min": min(r["model_share"] for r in rows),
        "model_share_max": max(r["model_share"] for r in rows),
        "bits_equal_everywhere": all(r["bits_equal"] for r in rows),
    }
    lines = [
        HEADING,
        "",
        f"`{command}`",
        "",
        "The fused kernel's time inside the model's own calls (`encode`, `feature_log_prob`: "
        "the encoder, the decoder and the likelihood terms, float32 operations a kernel held "
        "to the reference's results within 1e-9 nats must run as the reference runs them), "
        "and the ratio to the reference it would reach if every other step (float64 "
        "log-sum-exp, draws, copies) took no time: the *ceiling*. Seed-0 split of the "
        "tabular protocol, the default detector, at most 4,096 test rows encoded once, K = 64, "
        "no contributions; reference at its 64-row passes, fused at the library's; best of "
        "the alternating calls. Pooled as the kernel section pools: total rows over total "
        "seconds.",
        "",
        "| set | columns | rows | reference s | fused s | model s | model share | ratio | ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: -r["reference_s"]):
        lines.append(
            f"| {r['set']} | {r['columns']} | {r['rows']:,} | {r['reference_s']:.4f} | "
            f"{r['fused_s']:.4f} | {r['model_s']:.4f} | {r['model_share']:.2f} | "
            f"{r['ratio']:.2f} | {r['ceiling_ratio']:.2f} |"
        )
    lines += [
        "",
        f"Pooled over {head['sets']} sets: the fused kernel {head['pooled_ratio']:.2f}x the "
        f"reference; the model's own arithmetic is {head['pooled_model_share']:.0%} of the "
        f"fused kernel's time (per set {head['model_share_min']:.0%} to "
        f"{head['model_share_max']:.0%}), so with everything else free the ratio would be "
        f"at most **{head['pooled_ceiling_ratio']:.2f}x**. Issue 25's 2x at equal results "
        "would need the model's float32 arithmetic itself to run faster with the same bits; "
        "the only such lever found is the rows per pass, searched up to 512 rows in the "
        "kernel section above.",
        "",
    ]
    return "\n".join(lines), {"sets": rows, "headline": head}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", help="names such as celeba campaign (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from benchmarks.results_md import command_line, publish
    from benchmarks.tabular import list_sets, quiet_with_data

    if not quiet_with_data():
        return 2
    rows = []
    for path in list_sets(args.datasets):
        row = measure(path, args.repeats)
        rows.append(row)
        print(
            f"{row['set']:>14}: reference {row['reference_s']:.4f} s, fused {row['fused_s']:.4f} s, "
            f"model {row['model_s']:.4f} s ({row['model_share']:.0%}), ceiling "
            f"{row['ceiling_ratio']:.2f}x",
            flush=True,
        )
    section, doc = report(rows, command_line("kernel_floor.py", args.datasets))
    publish(RESULTS, HEADING, section, OUT, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
