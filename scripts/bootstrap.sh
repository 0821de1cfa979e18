#!/usr/bin/env bash
# Create .venv with Python 3.10 and install imgpipe into it (idempotent).
# Used by `make demo` / `make test` so a fresh machine needs no manual set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
STAMP="$VENV/.imgpipe-installed"

if [[ -f "$STAMP" && "$STAMP" -nt setup.py && "$STAMP" -nt requirements.lock && "$STAMP" -nt "$0" ]]; then
  exit 0
fi

say() { echo "[bootstrap] $*" >&2; }

if ! command -v uv >/dev/null 2>&1; then
  say "installing uv (fast resolver; plain pip backtracks for minutes on this stack)"
  python3 -m pip install --quiet uv || pip install --quiet uv
fi
UV=$(command -v uv || echo "python3 -m uv")

find_python() {
  if [[ -n "${IMGPIPE_PYTHON:-}" ]]; then echo "$IMGPIPE_PYTHON"; return; fi
  if command -v pyenv >/dev/null 2>&1; then
    local v
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.10(\.[0-9]+)?$' | sort -V | tail -1 || true)
    if [[ -n "$v" ]]; then PYENV_VERSION="$v" pyenv which python; return; fi
  fi
  if command -v python3.10 >/dev/null 2>&1; then command -v python3.10; return; fi
  say "no Python 3.10 found; asking uv to install one"
  $UV python install 3.10 >&2
  $UV python find 3.10
}

PY=$(find_python)
say "using $PY"
if [[ ! -x "$VENV/bin/python" ]]; then
  # --seed: TFX pip-installs module files at run time, so the venv needs pip.
  $UV venv --seed -p "$PY" "$VENV" >&2
fi
say "installing imgpipe and its pinned dependencies (requirements.lock)"
# --compile-bytecode: the packages' .pyc files are written now, as pip does, instead of at
# first import (never, where PYTHONDONTWRITEBYTECODE is set: every process then compiles
# TensorFlow, TFX and Beam from source, ~11 s more per `imgpipe run`; BENCHMARKS.md).
$UV pip install -p "$VENV/bin/python" --compile-bytecode -c requirements.lock -e ".[dev,airflow]" >&2
# uv compiles only the files this install wrote: a venv made before it compiled nothing.
# compileall writes the missing .pyc files and skips the up-to-date ones (1 s when all are).
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
say "compiling what is not yet compiled in $SITE"
"$VENV/bin/python" -m compileall -q -q "$SITE" >/dev/null 2>&1 || true  # unparsable files stay source
touch "$STAMP"
say "ready: $VENV"
