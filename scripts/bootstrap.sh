# Sourced by scripts/chat and scripts/test: make .venv (Python >= 3.11) and install the project
# into it, again only when pyproject.toml changed. Needs only python3 and a C compiler.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed")'
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$STAMP" ]; then
  echo "installing the project and its dev tools into .venv (first run takes a minute)" >&2
  # pip's output goes to a log, shown only if the install fails: a machine's pip config (an
  # extra index that lacks most packages, say) can make pip warn once per package otherwise.
  LOG=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e '.[dev]'; } >"$LOG" 2>&1; then
    tail -n 40 "$LOG" >&2
    echo "installing into .venv failed; the whole log: $LOG" >&2
    exit 1
  fi
  rm -f .venv/.installed-*
  touch "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
