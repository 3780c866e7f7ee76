#!/usr/bin/env bash
# The C side under valgrind memcheck: builds the release library and the broker, builds the C
# examples with their Makefile (ffi/examples/Makefile) and the C test program, and runs them
# against a real `shmbus broker` under
#   valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=1
# Any invalid read or write, use of uninitialised memory, or definite/indirect leak fails it.
# (One 48-byte "possibly lost" block remains: the Rust standard library's handle for the C
# program's main thread, made by `std::thread::current` and kept for the thread's lifetime.)
#
# Installs nothing: valgrind comes from ./.ci/install-tools.sh. Run by hand: ./.ci/c-checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null; then
  echo "c-checks: valgrind is missing (./.ci/install-tools.sh installs it)" >&2
  exit 1
fi

step() { printf '\n--- %s\n' "$*"; }

step "build the release library, the broker and the examples"
cargo build --release -p shmbus-ffi -p shmbus
make -C ffi/examples clean all
lib=target/release
examples=ffi/examples

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cc -std=c11 -Wall -Wextra -Werror -pedantic -g -Iffi/include -o "$work/peer" ffi/tests/c/peer.c \
  -L"$lib" -Wl,-rpath,"$PWD/$lib" -lshmbus_ffi

VALGRIND=(valgrind --leak-check=full --errors-for-leak-kinds=definite,indirect --error-exitcode=1)
bus="$work/bus.sock"
failures=0

# wait_for FILE TEXT: until FILE has a line containing TEXT (at most 120 s).
wait_for() {
  local deadline=$((SECONDS + 120))
  until grep -qF -- "$2" "$1" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "c-checks: no \"$2\" in $1 after 120 s:" >&2
      cat "$1" >&2 || true
      return 1
    fi
    sleep 0.1
  done
}

# check NAME STATUS LOG: report a program's result under valgrind, with its log on failure.
check() {
  local name=$1 status=$2 log=$3
  local summary
  summary=$(grep -E "ERROR SUMMARY|definitely lost|indirectly lost|possibly lost" "$log" | sed 's/^==[0-9]*== *//' | tr '\n' ' ')
  if [ "$status" -eq 0 ]; then
    echo "ok   $name: $summary"
  else
    echo "FAIL $name (exit $status): $summary"
    sed 's/^/    /' "$log"
    failures=$((failures + 1))
  fi
}

# run NAME PROGRAM ARGS...: runs to completion under valgrind, stdin from /dev/null.
run() {
  local name=$1
  shift
  local status=0
  "${VALGRIND[@]}" "$@" >"$work/$name.out" 2>"$work/$name.log" </dev/null || status=$?
  check "$name" "$status" "$work/$name.log"
}

step "start a broker"
./target/release/shmbus broker --bus "$bus" 2>"$work/broker.log" &
pids+=($!)
wait_for "$work/broker.log" "shmbus broker ready on $bus"

step "pub.c and sub.c"
"${VALGRIND[@]}" "$examples/sub" -b "$bus" -n 5 -t 120000 'vg/**' >"$work/sub.out" 2>"$work/sub.log" &
sub_pid=$!
wait_for "$work/sub.log" "subscribed vg/**"
run pub-args "$examples/pub" -b "$bus" vg/args one "two words"
run pub-loan "$examples/pub" -b "$bus" -n 2 vg/loan
status=0
printf 'from stdin\n' | "${VALGRIND[@]}" "$examples/pub" -b "$bus" vg/stdin >/dev/null 2>"$work/pub-stdin.log" || status=$?
check pub-stdin "$status" "$work/pub-stdin.log"
status=0
wait "$sub_pid" || status=$?
check sub "$status" "$work/sub.log"
expected=$'vg/args\tone\nvg/args\ttwo words\nvg/loan\tvg/loan #0\nvg/loan\tvg/loan #1\nvg/stdin\tfrom stdin'
if [ "$(sort "$work/sub.out")" != "$expected" ]; then
  echo "FAIL sub printed:"
  cat "$work/sub.out"
  failures=$((failures + 1))
fi

step "chat.c between two participants"
mkfifo "$work/alice.in" "$work/bob.in"
"${VALGRIND[@]}" "$examples/chat" -b "$bus" room alice <"$work/alice.in" >"$work/alice.out" 2>"$work/alice.log" &
alice_pid=$!
exec 3>"$work/alice.in"
"${VALGRIND[@]}" "$examples/chat" -b "$bus" room bob <"$work/bob.in" >"$work/bob.out" 2>"$work/bob.log" &
bob_pid=$!
exec 4>"$work/bob.in"
wait_for "$work/alice.log" "joined chat/room as alice"
wait_for "$work/bob.log" "joined chat/room as bob"
echo "hello bob" >&3
wait_for "$work/bob.out" "alice: hello bob"
echo "hello alice" >&4
wait_for "$work/alice.out" "bob: hello alice"
exec 3>&- 4>&-
status=0
wait "$alice_pid" || status=$?
check chat-alice "$status" "$work/alice.log"
status=0
wait "$bob_pid" || status=$?
check chat-bob "$status" "$work/bob.log"

step "calc.c: a C server and a C requester"
"${VALGRIND[@]}" "$examples/calc" serve --bus "$bus" --count 2 >/dev/null 2>"$work/calc-serve.log" &
serve_pid=$!
wait_for "$work/calc-serve.log" "serving calc/add"
run calc-ask "$examples/calc" ask --bus "$bus" 40 2
if [ "$(cat "$work/calc-ask.out")" != "42" ]; then
  echo "FAIL calc ask printed: $(cat "$work/calc-ask.out")"
  failures=$((failures + 1))
fi
status=0
"${VALGRIND[@]}" "$examples/calc" ask --bus "$bus" two three >/dev/null 2>"$work/calc-abandoned.log" || status=$?
if [ "$status" -ne 1 ] || ! grep -q "dropped the request" "$work/calc-abandoned.log"; then
  echo "FAIL calc ask of a bad request: exit $status"
  sed 's/^/    /' "$work/calc-abandoned.log"
  failures=$((failures + 1))
fi
status=0
wait "$serve_pid" || status=$?
check calc-serve "$status" "$work/calc-serve.log"

step "the C test program: error paths, zero copy, request/response"
mkdir -m 700 "$work/empty"
run peer-errors "$work/peer" errors "$bus" "$work/empty"
run peer-zerocopy "$work/peer" zerocopy "$bus"
run peer-reqrep "$work/peer" reqrep "$bus"

step "stop the broker"
kill -TERM "${pids[0]}"
wait "${pids[0]}"
pids=()

if [ "$failures" -ne 0 ]; then
  echo "c-checks: $failures failed"
  exit 1
fi
echo "c-checks: all clean under valgrind"
