#!/usr/bin/env bash
# tlflax launcher. Creates .venv when missing, installs tlflax into it (again whenever
# pyproject.toml changes), then runs the package or its tests.
#   ./launch.sh local [FLAGS...]   python -m tlflax.main FLAGS...
#   ./launch.sh test [PYTEST...]   the test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${TLFLAX_VENV:-.venv}

usage() {
  echo "usage: ./launch.sh local [--mode=MODE --config=PATH --workdir=DIR ...] | test [PYTEST ARGS...]" >&2
}

setup() {
  if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "launch.sh: error: tlflax needs python3 >= 3.10 on PATH" >&2
    exit 2
  fi
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.tlflax-installed" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "launch.sh: installing tlflax and its dependencies into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  local) setup; exec "$VENV/bin/python" -m tlflax.main "$@" ;;
  test) setup; exec "$VENV/bin/python" -m pytest tests "$@" ;;
  -h|--help|help) usage ;;
  *) usage; exit 2 ;;
esac
