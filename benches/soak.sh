#!/usr/bin/env bash
# The soak: mixed traffic with random client kills for SECS seconds (default 120), checking
# that stable tethered subscribers lose nothing and that the broker ends holding what it held
# before (descriptors, shared-memory segments, memory). See tests/soak.rs.
#   benches/soak.sh [SECS]            release build
#   SOAK_PROFILE=debug benches/soak.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-120}"
profile=(--release)
[ "${SOAK_PROFILE:-release}" = debug ] && profile=()
SHMBUS_SOAK_SECS="$secs" cargo test "${profile[@]}" --test soak -- --ignored --nocapture \
  mixed_traffic_with_random_kills_loses_nothing_and_leaks_nothing
