#!/usr/bin/env bash
# The main job: set up, train a detector on real data shipped with scikit-learn, score and
# evaluate a held-out split, and print a report. Extra arguments go to `anomaly-vae demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
exec .venv/bin/anomaly-vae demo "$@"
