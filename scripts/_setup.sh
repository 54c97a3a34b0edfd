# Shared setup, sourced by scripts/test and scripts/check: cd to the repo root, make sure
# .venv exists with python >= 3.11 and holds the current `.[test]` install.
# Re-installs only when pyproject.toml changed (hash kept in a stamp file inside .venv).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
VENV_PY="$VENV/bin/python"
STAMP="$VENV/.streamproc-install-stamp"

die() {
    echo "error: $*" >&2
    exit 2
}

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
        if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x "$VENV_PY" ]; then
    PY="$(find_python)" || die "streamproc needs Python 3.11 or newer; none found on PATH (set PYTHON=/path/to/python3.11)"
    echo "creating .venv with $PY ($("$PY" --version 2>&1))" >&2
    "$PY" -m venv "$VENV" || die "'$PY -m venv' failed (on Debian/Ubuntu: apt-get install python3-venv)"
fi
python_ok "$VENV_PY" || die ".venv uses $("$VENV_PY" --version 2>&1); remove .venv and re-run with Python 3.11+"

wanted="$("$VENV_PY" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' pyproject.toml)"
installed="$(cat "$STAMP" 2>/dev/null || true)"

# The stamp alone is not enough: the install may have been removed or point at another checkout.
install_present() {
    (cd / && "$VENV_PY" - "$ROOT" <<'PY'
import importlib.util, pathlib, sys
root = pathlib.Path(sys.argv[1]).resolve()
for name in ("pytest", "mypy", "ruff", "streamproc"):
    if importlib.util.find_spec(name) is None:
        sys.exit(1)
import streamproc
sys.exit(root not in pathlib.Path(streamproc.__file__).resolve().parents)
PY
    ) >/dev/null 2>&1
}

if [ "$installed" != "$wanted" ] || ! install_present; then
    echo "installing streamproc and its test tools into .venv" >&2
    "$VENV_PY" -m pip install --disable-pip-version-check --no-input --quiet -e '.[test]'
    echo "$wanted" >"$STAMP"
fi

export PATH="$VENV/bin:$PATH"
