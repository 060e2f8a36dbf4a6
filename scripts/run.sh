#!/usr/bin/env bash
# The main job: set up, train a detector on real data shipped with scikit-learn, score and
# evaluate a held-out split, register it in the embedded MLflow store (runs/mlruns) as
# wdbc@champion, and start the service on 127.0.0.1:${PORT:-8000}, printing curl examples.
# Ctrl-C stops the service. Extra arguments go to `anomaly-vae demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
.venv/bin/anomaly-vae demo --register wdbc --store runs/mlruns --port "${PORT:-8000}" "$@"
exec .venv/bin/anomaly-vae serve --model wdbc --store runs/mlruns --port "${PORT:-8000}"
