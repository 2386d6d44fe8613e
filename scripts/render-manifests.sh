#!/usr/bin/env bash
# Rewrites deploy/kubernetes/damselfly.yaml from the Helm chart's default values (run it after
# every chart change and commit the result; scripts/test-deploy.sh fails while they differ).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
source scripts/deploy-venv.sh
exec "$DEPLOY_PY" deploy/test/chart_test.py render
