#!/usr/bin/env bash
# One-way latency through the C API and through the Rust API, measured the same way in one
# run (see latency.c and latency.rs): a ping-pong between two pinned, busy-polling processes
# through a real broker, payload fully written and read, 8 B and 64 B, round trip / 2, each
# round trip timed on its own. The C and Rust runs alternate, ROUNDS times each, so that
# machine noise hits both alike; the summary gives the median p50 of the rounds.
#
#   ffi/bench/run.sh [ITERATIONS] [ROUNDS]      (defaults: 200000 and 3)
#
# Needs two free cores for meaningful numbers.
set -euo pipefail
cd "$(dirname "$0")/../.."
iterations=${1:-200000}
rounds=${2:-3}

cargo build --release -p shmbus -p shmbus-ffi
cargo build --release -p shmbus-ffi --example latency
work=$(mktemp -d)
broker_pid=
cleanup() {
  [ -n "$broker_pid" ] && kill "$broker_pid" 2>/dev/null && wait "$broker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cc -O3 -std=c11 -Wall -Wextra -Werror -pedantic -Iffi/include -o "$work/latency_c" ffi/bench/latency.c \
  -Ltarget/release -Wl,-rpath,"$PWD/target/release" -lshmbus_ffi
latency_rust=target/release/examples/latency

bus="$work/bus.sock"
./target/release/shmbus broker --bus "$bus" 2>"$work/broker.log" &
broker_pid=$!
deadline=$((SECONDS + 30))
until grep -q "shmbus broker ready on" "$work/broker.log"; do
  ((SECONDS < deadline)) || { cat "$work/broker.log"; exit 1; }
  sleep 0.05
done

echo "one-way latency in ns ($iterations samples per run, $rounds rounds, $(nproc) CPUs)"
for size in 8 64; do
  for round in $(seq "$rounds"); do
    "$work/latency_c" "$bus" "$size" "$iterations" | tee -a "$work/results"
    "$latency_rust" "$bus" "$size" "$iterations" | tee -a "$work/results"
  done
done

echo
echo "median p50 over $rounds rounds:"
for size in 8 64; do
  c=$(awk -v s="$size" '$1 == "c" && $2 == s {print $4}' "$work/results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  r=$(awk -v s="$size" '$1 == "rust" && $2 == s {print $4}' "$work/results" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  awk -v s="$size" -v c="$c" -v r="$r" 'BEGIN {printf "  %2d B: C %d ns, Rust %d ns, C/Rust %.3f\n", s, c, r, c / r}'
done
