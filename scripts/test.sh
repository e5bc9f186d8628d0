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
# Two workers (pytest-xdist; EDGEREC_TEST_WORKERS to change): many tests wait on subprocesses, servers and
# Redis, so two processes take ~260 s where one took ~390 s on the 2-core CI machine. A module's tests stay
# on one worker (--dist loadscope), so its module-scoped servers and models are built once.
python -m pytest -q -m "not slow" -n "${EDGEREC_TEST_WORKERS:-2}" --dist loadscope "$@"
