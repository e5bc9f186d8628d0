#!/usr/bin/env bash
# Create (or reuse) ./.venv and install edgerec into it. Usage: scripts/setup-venv.sh [extra]   e.g. "dev"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do command -v "$c" >/dev/null 2>&1 && { PY=$c; break; }; done
fi
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "edgerec needs Python 3.11, found " + sys.version)'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
# torch is pinned to the CPU wheel (torch==2.13.0); pip finds it on the machine's wheel cache or PyPI's CPU index.
python -m pip install -q -e "$spec"
