#!/usr/bin/env bash
# `make bench`: installs the anchors (supervisord, s6, runit) and a C compiler from
# Debian's packages when missing, builds orchestrator in release mode, and runs every
# workload. Benchmarks are not tests: they print figures, they do not pass or fail.
# Needs root for apt-get when something is missing. BENCH_ARGS="--quick" for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v supervisord >/dev/null || need+=(supervisor)
command -v s6-svscan >/dev/null || need+=(s6)
command -v runsvdir >/dev/null || need+=(runit)
command -v cc >/dev/null || need+=(gcc)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
cargo build --release -q
exec python3 bench/bench.py ${BENCH_ARGS:-} "$@"
