#!/usr/bin/env bash
# Installs the system tools the tests use, from Debian's packages, if they are missing.
set -euo pipefail
need=()
command -v strace >/dev/null || need+=(strace)
command -v valgrind >/dev/null || need+=(valgrind)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
echo "strace: $(command -v strace)  valgrind: $(command -v valgrind)"
