"""deploy/: what can be checked without a Docker engine (none runs here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def exported_metric_names() -> set[str]:
    import anomaly_vae.service.metrics  # noqa: F401  (registers the metrics)
    from prometheus_client import REGISTRY

    # families list no samples until a label set is used: derive the series names
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian's prometheus package)"
)
def test_prometheus_config_and_rules_validate(tmp_path):
    rules = DEPLOY / "prometheus" / "alerts.yml"
    config = (
        (DEPLOY / "prometheus" / "prometheus.yml")
        .read_text()
        .replace("/etc/prometheus/alerts.yml", str(rules))
    )
    (tmp_path / "prometheus.yml").write_text(config)
    check = subprocess.run(
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    check = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # the rules on synthetic series: the outlier-rate alert reads the model's own alpha
    # (4% flagged fires at alpha = 0.01, stays silent at 0.05)
    check = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        capture_output=True, text=True, cwd=DEPLOY / "prometheus",
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def _metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\b(anomaly_vae_[a-z_]+)", expr))


def _recorded_refs(expr: str) -> set[str]:
    return set(re.findall(r"\b(anomaly_vae:[a-z_0-9:]+)", expr))


DASHBOARDS = ("anomaly-vae.json", "anomaly-vae-drift.json")


def _rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) of every query: panels' targets, template variables, annotations."""
    out = [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]
    for var in dash.get("templating", {}).get("list", []):
        q = var["query"]["query"] if isinstance(var.get("query"), dict) else var.get("query", "")
        m = re.fullmatch(r"label_values\((.+), *\w+\)", q)
        if m:
            out.append((f"variable {var['name']}", m.group(1)))
    for ann in dash.get("annotations", {}).get("list", []):
        if "expr" in ann:
            out.append((f"annotation {ann['name']}", ann["expr"]))
    return out


def test_dashboards_and_rules_only_use_metrics_the_service_exports():
    names = exported_metric_names()
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = ds["datasources"][0]["uid"]
    uids = set()
    for file in DASHBOARDS:
        dash = json.loads((DEPLOY / "grafana" / "dashboards" / file).read_text())
        uids.add(dash["uid"])
        assert dash["panels"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids))
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == uid
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for where, expr in _dashboard_exprs(dash):
            refs, recs = _metric_refs(expr), _recorded_refs(expr)
            assert refs | recs, expr
            assert refs <= names, f"{file}: {where!r} uses unknown metrics {refs - names}"
            assert recs <= recorded, f"{file}: {where!r} uses unknown recording rules"
    assert uids == {"anomaly-vae", "anomaly-vae-drift"}
    for rule in rules:
        assert _metric_refs(rule["expr"]) <= names, rule.get("alert", rule.get("record"))
        assert _recorded_refs(rule["expr"]) <= recorded, rule.get("alert", rule.get("record"))
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert {
        "AnomalyVAEDriftMartingale", "AnomalyVAEDriftDetected", "AnomalyVAEOutlierRateHigh",
        "AnomalyVAEDriftChecksStale", "AnomalyVAEDriftReferenceMismatch",
    } <= alerts  # fmt: skip


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian's prometheus package)"
)
def test_every_dashboard_query_parses(tmp_path):
    """Each dashboard query, with Grafana's variables put in, is parsed by promtool as
    the expression of a recording rule (a query that does not parse fails the check)."""
    rules = []
    for file in DASHBOARDS:
        dash = json.loads((DEPLOY / "grafana" / "dashboards" / file).read_text())
        for i, (_, expr) in enumerate(_dashboard_exprs(dash)):
            expr = expr.replace("$__rate_interval", "5m").replace("$name", ".*")
            rules.append({"record": f"dashboard:{file.split('.')[0].replace('-', '_')}:{i}",
                          "expr": expr})  # fmt: skip
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    check = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout


def test_compose_wires_the_services():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert set(compose["services"]) == {"mlflow", "service", "prometheus", "grafana"}
    svc = compose["services"]["service"]
    assert svc["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["service:8000"]
    assert "8000:8000" in svc["ports"]


def test_dockerfile_is_cpu_nonroot_and_healthchecked():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "torch==2.13.0" in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text
    assert "/healthz" in text
    # served by `anomaly-vae serve`, whose workers know their number (threads per worker)
    assert re.search(r'^CMD \["anomaly-vae", "serve"', text, re.M)
    assert re.search(r"^ENV ANOMALY_VAE_WORKERS=\d+", text, re.M)
    cmd = next(ln for ln in text.splitlines() if ln.startswith("CMD ["))
    assert "--workers" not in cmd  # the number comes from ANOMALY_VAE_WORKERS alone


def _cron_command() -> list[str]:
    line = next(
        ln
        for ln in (DEPLOY / "cron" / "anomaly-vae").read_text().splitlines()
        if ln and not ln.startswith("#") and "=" not in ln.split()[0]
    )
    fields = line.split(">>")[0].split()
    assert len(fields[:5]) == 5 and fields[5] == "anomaly"  # m h dom mon dow user
    return fields[6:]


def test_cronjob_and_cron_line_run_the_same_valid_command():
    """The Kubernetes CronJob and the cron line run one command, and that command parses
    with the real CLI parser (a typo in a flag would only show at 02:30)."""
    from anomaly_vae.cli import _parser

    job = yaml.safe_load((DEPLOY / "kubernetes" / "score-batch-cronjob.yaml").read_text())
    assert job["kind"] == "CronJob" and job["spec"]["concurrencyPolicy"] == "Forbid"
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    args = pod["containers"][0]["args"]
    cron = _cron_command()
    assert Path(cron[0]).name == args[0] == "anomaly-vae"
    assert cron[1:] == args[1:]
    parsed = _parser().parse_args(args[1:])
    assert parsed.command == "score-batch" and "{yesterday}" in parsed.input
    # the exit codes the Job fails fast on are the ones the CLI documents as final
    from anomaly_vae import cli

    rules = job["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["onExitCodes"]["values"] == [cli.EXIT_BAD_INPUT, cli.EXIT_MODEL_UNAVAILABLE]
    assert cli.EXIT_RETRY not in rules[0]["onExitCodes"]["values"]  # retried
