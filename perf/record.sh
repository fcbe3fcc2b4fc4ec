#!/usr/bin/env bash
# perf record with call graphs of a command built with the profiling profile.
#   bash perf/record.sh [--quick] [-o OUT] -- CMD...     record CMD (already built)
#   bash perf/record.sh [--quick] [-o OUT]               record `ops spsc-push-pop` (perf/src/bin/ops.rs)
# Builds corelane-perf with `--profile profiling` and RUSTFLAGS="-C force-frame-pointers=yes"
# into target/profiling; --call-graph fp. Falls back to -e cpu-clock when the hardware cycles
# counter is missing. Exit 3: perf not installed, or installed and unable to run (a wrapper
# without the kernel's tools, perf_event_paranoid too high): CI skips then.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/perf.data
iters=20000000
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) iters=200000; shift ;;
        -o) out=$2; shift 2 ;;
        --) shift; break ;;
        *) echo "record.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if ! command -v perf >/dev/null; then
    echo "SKIPPED: perf is not installed (apt-get install linux-perf / linux-tools); nothing recorded" >&2
    exit 3
fi
if ! why=$(perf stat -e cpu-clock true 2>&1 >/dev/null); then
    echo "SKIPPED: perf is installed but does not run here; nothing recorded. perf said:" >&2
    echo "$why" | head -3 >&2
    exit 3
fi
export CARGO_TARGET_DIR=target/profiling
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --profile profiling -p corelane-perf --bins >&2
if [ $# -eq 0 ]; then set -- target/profiling/profiling/ops spsc-push-pop "$iters"; fi
event=()
# The output is taken whole before it is matched (a `| grep -q` under pipefail raced SIGPIPE).
cycles=$(perf stat -e cycles true 2>&1 || true)
if [[ $cycles == *"not supported"* || $cycles == *"not counted"* ]]; then
    echo "record.sh: no hardware cycles counter here; sampling -e cpu-clock" >&2
    event=(-e cpu-clock)
fi
mkdir -p "$(dirname "$out")"
perf record "${event[@]}" -g --call-graph fp -o "$out" -- "$@"
echo "record.sh: wrote $out (next: bash perf/flamegraph.sh $out)" >&2
