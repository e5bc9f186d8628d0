#!/bin/sh
# One-shot model bootstrap for containers (docker compose "trainer", Kubernetes Job "edgerec-train"); installed in
# the images as /usr/local/bin/edgerec-train-once. Steps, all through the one `edgerec` CLI:
#   1. if the store already has a promoted version that verifies, do nothing (exit 0), unless EDGEREC_TRAIN_FORCE=1;
#   2. edgerec data prepare  $EDGEREC_TRAIN_SOURCE  → $EDGEREC_HOME/bootstrap/data/<name>
#   3. edgerec train         <prepared dataset>      → $EDGEREC_HOME/bootstrap/runs/<name>
#   4. edgerec export        <run> --publish --promote  into $EDGEREC_MODEL_STORE
# Settings (environment):
#   EDGEREC_TRAIN_SOURCE  folder/file of interactions (RecBole atomic files, Amazon JSON lines, CSV) or a dataset
#                         name the CLI knows (ml-100k); default /data/source
#   EDGEREC_TRAIN_NAME    dataset name; default "source"
#   EDGEREC_PREPARE_ARGS, EDGEREC_TRAIN_ARGS, EDGEREC_EXPORT_ARGS
#                         extra flags for each step, split on whitespace (no quoting), e.g. "--k-core 10" or
#                         "--set epochs=20 --set n_layer=4" (TrainConfig fields, training/train.py)
#   EDGEREC_TRAIN_FORCE   1: train and promote even when a promoted version exists
#   EDGEREC_HOME, EDGEREC_MODEL_STORE   as for every edgerec command
set -eu

log() { printf 'edgerec-train-once: %s\n' "$*" >&2; }

source_arg=${EDGEREC_TRAIN_SOURCE:-/data/source}
name=${EDGEREC_TRAIN_NAME:-source}
home=${EDGEREC_HOME:-.edgerec}
work="$home/bootstrap"

command -v edgerec >/dev/null 2>&1 || { log "the edgerec CLI is not on PATH"; exit 127; }

if [ "${EDGEREC_TRAIN_FORCE:-0}" != 1 ]; then
  # `models verify current` exits 0 only when a version is promoted and every file matches its manifest; with no
  # promoted version (or a damaged one) it exits non-zero and we train a fresh one.
  if current=$(edgerec models verify current 2>/dev/null); then
    log "promoted model present, nothing to do: $current (EDGEREC_TRAIN_FORCE=1 retrains)"
    exit 0
  fi
  log "no promoted model that verifies; training one from $source_arg"
fi

mkdir -p "$work/data" "$work/runs"
data_dir="$work/data/$name"
run_dir="$work/runs/$name"
# A run left by an earlier, failed attempt (the container's home survives `docker compose up` re-runs) is ours to
# replace; the prepared dataset is replaced by `data prepare` itself.
rm -rf "$run_dir"

# The *_ARGS variables are split on whitespace on purpose (flags and their values).
# shellcheck disable=SC2086
edgerec data prepare "$source_arg" --name "$name" --out "$data_dir" ${EDGEREC_PREPARE_ARGS:-}
# shellcheck disable=SC2086
edgerec train "$data_dir" --run-dir "$run_dir" --quiet ${EDGEREC_TRAIN_ARGS:-}
# shellcheck disable=SC2086
edgerec export "$run_dir" --publish --promote ${EDGEREC_EXPORT_ARGS:-}

edgerec models verify current
log "done"
