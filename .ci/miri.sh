#!/usr/bin/env bash
# Runs the in-process ring tests (heap-backed rings) and unit tests under Miri.
#
# Miri needs a nightly toolchain. Where rustup can install it, this runs; where it cannot (no
# nightly on the machine and no way to fetch one), it says so and stops without failing, since
# Miri is a check "where it can run". Weak-memory emulation is off: loom covers orderings, and
# Miri's emulation panics internally on memory written both atomically and non-atomically, which
# a ring does by design (a frame header in one lap is payload in another).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo +nightly miri --version >/dev/null 2>&1; then
  if ! timeout 600 rustup toolchain install nightly --profile minimal --component miri,rust-src >/dev/null 2>&1 \
    && ! timeout 600 rustup component add --toolchain nightly miri rust-src >/dev/null 2>&1; then
    echo "miri: no nightly toolchain with miri available on this machine; skipped"
    exit 0
  fi
fi
export CARGO_TARGET_DIR=target/miri
MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-disable-weak-memory-emulation" \
  cargo +nightly miri test -p shmbus-shm --lib
# The ring tests simulate dead processes by forgetting their handles, which Miri would report
# as leaks.
MIRIFLAGS="-Zmiri-disable-isolation -Zmiri-disable-weak-memory-emulation -Zmiri-ignore-leaks" \
  cargo +nightly miri test -p shmbus-shm --test ring_local
