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


def test_dashboard_and_alerts_only_use_metrics_the_service_exports():
    names = exported_metric_names()
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "anomaly-vae.json").read_text())
    ds = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = ds["datasources"][0]["uid"]
    assert dash["uid"] == "anomaly-vae"
    assert dash["panels"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            refs = _metric_refs(target["expr"])
            assert refs, target["expr"]
            assert refs <= names, f"panel {panel['title']!r} uses unknown metrics {refs - names}"
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        assert _metric_refs(rule["expr"]) <= names, rule["alert"]


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
