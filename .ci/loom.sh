#!/usr/bin/env bash
# Model-checks the ring protocol with loom (shm/src/protocol/loom_models.rs).
# LOOM_MAX_PREEMPTIONS bounds the search; 3 explores every model in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" \
  cargo test -p shmbus-shm --release --lib loom
