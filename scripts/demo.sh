#!/usr/bin/env bash
# The main job: install edgerec, train a small model on real data, serve it and print a recommendation over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-venv.sh
# shellcheck disable=SC1091
. .venv/bin/activate
exec edgerec demo "$@"
