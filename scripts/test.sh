#!/usr/bin/env bash
# The test command: install edgerec with its dev tools, make sure Redis is up, lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh dev
# shellcheck disable=SC1091
. .venv/bin/activate
# Integration tests talk to a real Redis at 127.0.0.1:6379; start one if none answers (tests skip if this fails).
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; then
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
fi
ruff check .
ruff format --check .
python -m pytest -q -m "not slow" "$@"
