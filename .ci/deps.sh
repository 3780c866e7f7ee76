#!/usr/bin/env bash
# The library built with the newest dependency versions its requirements allow, and with the
# oldest its direct requirements allow (`-Z direct-minimal-versions`, nightly cargo), in a copy of
# the committed tree, so that the caret requirements in the manifests are true for users whose
# trees resolve them differently from our Cargo.lock. Where no nightly toolchain can be had, the
# oldest-versions build is skipped with a message (like Miri).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git archive HEAD | tar -x -C "$work"
export CARGO_TARGET_DIR="$PWD/target/deps-check"

build() {
  cargo build -q -p shmbus --no-default-features
  cargo build -q -p shmbus -p shmbus-ffi
}

echo "--- newest allowed versions"
(cd "$work" && cargo update -q && build)

echo "--- oldest versions the direct requirements allow"
if ! cargo +nightly --version >/dev/null 2>&1 \
  && ! timeout 600 rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
  echo "deps: no nightly cargo on this machine; oldest-versions build skipped"
  exit 0
fi
(cd "$work" && cargo +nightly update -q -Z direct-minimal-versions && build)
echo "deps: both resolutions build"
