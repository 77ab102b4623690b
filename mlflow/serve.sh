#!/usr/bin/env bash
# Start a real MLflow tracking server (tracking + Model Registry + artifact serving) with MLflow's
# authentication (basic-auth app), bound to 127.0.0.1 unless MLFLOW_HOST says otherwise.
#   MLFLOW_ADMIN_PASSWORD=... bash mlflow/serve.sh [PORT] [BACKEND_STORE_URI] [ARTIFACTS_DIR]
# Defaults: port 5000, sqlite:///$FML_HOME/server/mlflow.db, $FML_HOME/server/artifacts.
# Environment:
#   MLFLOW_ADMIN_PASSWORD  the admin's password (required: there is no default password); it creates the admin
#                          on the FIRST start of a server folder, later starts keep the stored users
#   MLFLOW_ADMIN_USERNAME  the admin's name (default admin)
#   MLFLOW_HOST            interface to bind (default 127.0.0.1)
#   MLFLOW_AUTH_CACHE_TTL  seconds a verified user+password stays verified (default 60; 0 checks the password hash
#                          on every request: 5-6x slower requests, benchmarks/tracking_server_auth.py). One worker: a password change or deletion made
#                          through the auth API takes effect at once; one made in the user database directly, after
#                          at most this long
#   MLFLOW_TLS_CERT, MLFLOW_TLS_KEY   serve HTTPS with this certificate and key (put a server reachable from
#                          other machines behind TLS: basic auth sends passwords with every request)
# Clients: export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT MLFLOW_TRACKING_USERNAME=... MLFLOW_TRACKING_PASSWORD=...
# Any SQLAlchemy URI works as the backend, e.g. postgresql://user:pass@127.0.0.1:5432/mlflow.
set -euo pipefail
if [ -z "${MLFLOW_ADMIN_PASSWORD:-}" ]; then
  echo "mlflow/serve.sh: set MLFLOW_ADMIN_PASSWORD (the admin's password; the server has no default password)" >&2
  exit 2
fi
PORT="${1:-5000}"
HOME_DIR="${FML_HOME:-$HOME/.fml}/server"
mkdir -p "$HOME_DIR"
chmod 700 "$HOME_DIR"
BACKEND="${2:-sqlite:///$HOME_DIR/mlflow.db}"
ARTIFACTS="${3:-$HOME_DIR/artifacts}"
mkdir -p "$ARTIFACTS"
umask 077
# the auth app reads its admin and user database from this file (written fresh, readable by us only)
cat > "$HOME_DIR/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$HOME_DIR/basic_auth.db
admin_username = ${MLFLOW_ADMIN_USERNAME:-admin}
admin_password = $MLFLOW_ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = ${MLFLOW_AUTH_CACHE_TTL:-60}
INI
export MLFLOW_AUTH_CONFIG_PATH="$HOME_DIR/basic_auth.ini"
if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then  # CSRF key: kept per server folder
  [ -s "$HOME_DIR/secret_key" ] || python3 -c "import secrets; print(secrets.token_hex(32))" > "$HOME_DIR/secret_key"
  export MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$HOME_DIR/secret_key")"
fi
TLS=()
if [ -n "${MLFLOW_TLS_CERT:-}" ] || [ -n "${MLFLOW_TLS_KEY:-}" ]; then
  TLS=(--uvicorn-opts "--ssl-certfile $MLFLOW_TLS_CERT --ssl-keyfile $MLFLOW_TLS_KEY")
fi
exec mlflow server --app-name basic-auth --host "${MLFLOW_HOST:-127.0.0.1}" --port "$PORT" \
  --backend-store-uri "$BACKEND" \
  --artifacts-destination "$ARTIFACTS" --serve-artifacts \
  --workers 1 "${TLS[@]}"
