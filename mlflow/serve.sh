#!/usr/bin/env bash
# Start a real MLflow tracking server (tracking + Model Registry + artifact serving) bound to 127.0.0.1.
#   bash mlflow/serve.sh [PORT] [BACKEND_STORE_URI] [ARTIFACTS_DIR]
# Defaults: port 5000, sqlite:///$FML_HOME/server/mlflow.db, $FML_HOME/server/artifacts.
# Any SQLAlchemy URI works as the backend, e.g. postgresql://user:pass@127.0.0.1:5432/mlflow.
# Point the toolkit at it with: export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT
set -euo pipefail
PORT="${1:-5000}"
HOME_DIR="${FML_HOME:-$HOME/.fml}/server"
mkdir -p "$HOME_DIR"
BACKEND="${2:-sqlite:///$HOME_DIR/mlflow.db}"
ARTIFACTS="${3:-$HOME_DIR/artifacts}"
mkdir -p "$ARTIFACTS"
exec mlflow server --host 127.0.0.1 --port "$PORT" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" --serve-artifacts \
  --workers 1
