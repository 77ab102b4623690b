#!/usr/bin/env bash
# Source me: creates once, then activates, the project's virtual environment. It lives outside the
# clone (~/.cache/fml-toolkit/venv-<hash of pyproject.toml>), so clones and CI runs share it.
set -euo pipefail
FML_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_hash="$(sha256sum "$FML_ROOT/pyproject.toml" | cut -c1-16)"
FML_VENV="${FML_VENV:-$HOME/.cache/fml-toolkit/venv-$_hash}"
_fml_create_venv() {
  echo "[fml] creating the environment in $FML_VENV (first use only; a few minutes)" >&2
  rm -rf "$FML_VENV"
  python3 -m venv "$FML_VENV"
  "$FML_VENV/bin/pip" install -q --upgrade pip "setuptools>=68" wheel
  # timm needs torchvision, and torchvision must match torch exactly: install the pair first
  # (on this machine kind both come from local wheels; elsewhere pip downloads them).
  "$FML_VENV/bin/pip" install -q "torch==2.14.1" "torchvision==0.29.1" \
    || echo "[fml] torch 2.14.1/torchvision 0.29.1 unavailable here; letting pip choose a matching pair" >&2
  "$FML_VENV/bin/pip" install -q -e "$FML_ROOT[dev,mujoco]"
  touch "$FML_VENV/.complete"
}
if [ ! -f "$FML_VENV/.complete" ]; then
  # one creator at a time: a second first use (a test run beside `fml run`) waits, then finds it complete
  mkdir -p "$(dirname "$FML_VENV")"
  if command -v flock >/dev/null; then
    exec 9>"$FML_VENV.lock"
    flock 9
    [ -f "$FML_VENV/.complete" ] || _fml_create_venv
    flock -u 9
    exec 9>&-
  else
    _fml_create_venv
  fi
fi
unset -f _fml_create_venv
export PATH="$FML_VENV/bin:$PATH"
export PYTHONPATH="$FML_ROOT${PYTHONPATH:+:$PYTHONPATH}"
