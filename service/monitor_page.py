"""The built-in monitoring page (``GET /monitor``): one self-contained HTML document, no
external assets (it works offline), that polls ``GET /v1/drift`` and ``GET /v1/models``
and draws what an operator without Grafana needs: the model and version, records and
outlier rate against alpha, the score distribution against the reference, the
martingale against its threshold, the window verdicts and the top drifted features."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>anomaly-vae monitor</title>
<style>
:root { --ok: #1a7f37; --bad: #cf222e; --wait: #9a6700; --ink: #1f2328; --mute: #656d76;
        --line: #d0d7de; --ref: #8c959f; --win: #0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink);
       margin: 0; background: #f6f8fa; }
header { display: flex; align-items: center; gap: 16px; padding: 14px 24px;
         background: #fff; border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; }
#model { color: var(--mute); }
.badge { padding: 3px 12px; border-radius: 12px; color: #fff; font-weight: 600; }
.badge.ok { background: var(--ok); } .badge.bad { background: var(--bad); }
.badge.wait { background: var(--wait); }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr));
       gap: 16px; padding: 16px 24px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 14px; }
section h2 { font-size: 14px; margin: 0 0 10px; }
.big { font-size: 26px; font-weight: 600; }
.mute { color: var(--mute); font-size: 12px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #eaeef2; font-size: 13px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.drift td { color: var(--bad); font-weight: 600; }
.wide { grid-column: 1 / -1; }
svg text { font-size: 11px; fill: var(--mute); }
#error { color: var(--bad); padding: 0 24px; }
</style>
</head>
<body>
<header>
  <h1>anomaly-vae monitor</h1>
  <span id="model">loading...</span>
  <span id="alarm" class="badge wait">waiting</span>
  <span class="mute" id="checked"></span>
</header>
<div id="error"></div>
<main>
  <section>
    <h2>Records and outlier rate</h2>
    <div class="big" id="records">-</div>
    <div class="mute">records monitored, every worker together</div>
    <p><span class="big" id="rate">-</span> flagged in the count window,
       against alpha <b id="alpha">-</b></p>
  </section>
  <section>
    <h2>Martingale (anytime-valid alarm)</h2>
    <svg id="martingale" viewBox="0 0 300 60" style="width: 100%; height: auto; max-height: 90px"></svg>
    <div class="mute" id="martingale-text"></div>
  </section>
  <section class="wide">
    <h2>Score distribution against the reference (count window, share per ventile)</h2>
    <svg id="scores" viewBox="0 0 800 170" style="width: 100%; height: auto; max-height: 260px"></svg>
    <div class="mute">grey: reference (calibration scores); blue: recent records.
      Left: the most anomalous twentieth of the reference; right: the most normal.</div>
  </section>
  <section>
    <h2>Window checks</h2>
    <table id="verdicts"><thead><tr><th>window</th><th>signal</th><th>p (Holm)</th>
      <th>effect</th><th>verdict</th></tr></thead><tbody></tbody></table>
  </section>
  <section>
    <h2>Top drifted features</h2>
    <div id="drifted-features" class="mute">none</div>
    <table id="features"><thead><tr><th>feature</th><th>q</th><th>effect</th>
      <th>contribution shift (nats)</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script>
"use strict";
const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh") || 5) * 1000;
const $ = (id) => document.getElementById(id);
const fmt = (x, d = 3) => (x === null || x === undefined) ? "-" :
  (Math.abs(x) < 1e-3 && x !== 0 ? x.toExponential(1) : Number(x).toFixed(d));
const el = (tag, text, cls) => { const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) { const e = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; }

function drawScores(counts) {
  const box = $("scores"); box.replaceChildren();
  if (!counts) return;
  const ref = counts.reference, win = counts.window;
  const rs = ref.reduce((a, b) => a + b, 0) || 1, ws = win.reduce((a, b) => a + b, 0) || 1;
  const shares = ref.map((r, i) => [r / rs, win[i] / ws]);
  const top = Math.max(...shares.flat(), 0.1);
  const bw = 780 / ref.length;
  shares.forEach(([r, w], i) => {
    const x = 10 + i * bw, h = (v) => 140 * v / top;
    box.append(svg("rect", {x: x + 2, y: 150 - h(r), width: bw / 2 - 3, height: h(r), fill: "#8c959f"}));
    box.append(svg("rect", {x: x + bw / 2, y: 150 - h(w), width: bw / 2 - 3, height: h(w), fill: "#0969da"}));
  });
  box.append(svg("line", {x1: 10, x2: 790, y1: 150, y2: 150, stroke: "#d0d7de"}));
  const t = svg("text", {x: 12, y: 165}); t.textContent = "most anomalous"; box.append(t);
  const u = svg("text", {x: 700, y: 165}); u.textContent = "most normal"; box.append(u);
}

function drawMartingale(m) {
  const box = $("martingale"); box.replaceChildren();
  if (!m || m.threshold === null || m.threshold === undefined) { $("martingale-text").textContent = "no records yet"; return; }
  const span = Math.max(m.threshold * 1.5, m.log_max || 0, 1);
  const x = (v) => 290 * Math.max(0, Math.min(v, span)) / span + 5;
  box.append(svg("rect", {x: 5, y: 20, width: 290, height: 16, fill: "#eaeef2"}));
  box.append(svg("rect", {x: 5, y: 20, width: Math.max(0, x(m.log_value) - 5), height: 16,
    fill: m.alarm ? "#cf222e" : "#1a7f37"}));
  box.append(svg("line", {x1: x(m.threshold), x2: x(m.threshold), y1: 12, y2: 44, stroke: "#1f2328", "stroke-width": 2}));
  const t = svg("text", {x: x(m.threshold) + 3, y: 56}); t.textContent = "threshold"; box.append(t);
  $("martingale-text").textContent = `log value ${fmt(m.log_value, 2)} (max ${fmt(m.log_max, 2)}) against ` +
    `log(1/level) = ${fmt(m.threshold, 2)}; level ${m.level}: on data like the calibration set ` +
    `the chance it ever alarms is at most ${m.level}` + (m.alarm ? ` | ALARM after ${m.alarm_after_records} records` : "");
}

function render(drift, models) {
  const loaded = models && models.loaded;
  $("model").textContent = loaded ? `${loaded.name} version ${loaded.version ?? "-"}` +
    (loaded.alias ? ` (${loaded.alias})` : "") : "no model loaded";
  const windows = drift.windows || {};
  const m = drift.martingale;
  const drifted = Object.values(windows).some((w) => w.verdict === "drift") || (m && m.alarm);
  const badge = $("alarm");
  if (drift.status !== "checked") { badge.textContent = "waiting for the first check"; badge.className = "badge wait"; }
  else if (drifted) { badge.textContent = "DRIFT"; badge.className = "badge bad"; }
  else { badge.textContent = "no drift"; badge.className = "badge ok"; }
  $("checked").textContent = drift.checked_at ? "checked " + new Date(drift.checked_at * 1000).toLocaleTimeString() +
    (drift.reference_missing ? " | this model has no drift reference: only the martingale runs" : "") : "";
  $("records").textContent = m && m.records !== null ? m.records.toLocaleString() : "0";
  const count = windows.count || windows.time;
  $("rate").textContent = count && count.outlier_rate !== null ? (100 * count.outlier_rate).toFixed(1) + "%" : "-";
  $("alpha").textContent = count && count.alpha !== null ? (100 * count.alpha).toFixed(1) + "%" : "-";
  drawMartingale(m);
  drawScores(count && count.score_counts);
  const vb = $("verdicts").tBodies[0]; vb.replaceChildren();
  for (const [wname, w] of Object.entries(windows)) {
    for (const [sname, s] of Object.entries(w.signals)) {
      const tr = el("tr", undefined, s.verdict === "drift" ? "drift" : "");
      tr.append(el("td", `${wname} (${w.records})`), el("td", sname), el("td", fmt(s.p_value), "num"),
        el("td", fmt(s.effect), "num"), el("td", s.verdict));
      vb.append(tr);
    }
  }
  const fb = $("features").tBodies[0]; fb.replaceChildren();
  const names = [];
  for (const f of (count ? count.features : [])) {
    const tr = el("tr", undefined, f.verdict === "drift" ? "drift" : "");
    if (f.verdict === "drift") names.push(f.feature);
    tr.append(el("td", f.feature), el("td", fmt(f.q_value), "num"), el("td", fmt(f.effect), "num"),
      el("td", fmt(f.contribution_shift_nats), "num"));
    fb.append(tr);
  }
  $("drifted-features").textContent = names.length ? "drifted: " + names.join(", ") : "none drifted";
}

async function refresh() {
  try {
    const [d, m] = await Promise.all([fetch("v1/drift"), fetch("v1/models")]);
    if (!d.ok) throw new Error(`GET /v1/drift: ${d.status}`);
    render(await d.json(), m.ok ? await m.json() : null);
    $("error").textContent = "";
  } catch (e) { $("error").textContent = String(e); }
  setTimeout(refresh, REFRESH_MS);
}
refresh();
</script>
</body>
</html>
"""
