#!/usr/bin/env bash
# An SVG flame graph of a perf.data, with inferno (installed into target/tools if missing).
#   bash perf/flamegraph.sh [perf.data] [out.svg]     defaults: target/perf.data target/flamegraph.svg
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-target/perf.data}
svg=${2:-target/flamegraph.svg}
if ! command -v perf >/dev/null; then
    echo "SKIPPED: perf is not installed; no flame graph" >&2
    exit 3
fi
if ! perf stat -e cpu-clock true >/dev/null 2>&1; then
    echo "SKIPPED: perf is installed but does not run here (see perf/record.sh); no flame graph" >&2
    exit 3
fi
tools=target/tools/bin
if [ ! -x "$tools/inferno-flamegraph" ]; then
    echo "flamegraph.sh: installing inferno into target/tools (cargo install inferno --root target/tools)" >&2
    if ! cargo install inferno --locked --root target/tools >&2; then
        echo "SKIPPED: inferno could not be installed (offline?); no flame graph" >&2
        exit 3
    fi
fi
perf script -i "$data" | "$tools/inferno-collapse-perf" | "$tools/inferno-flamegraph" >"$svg"
echo "flamegraph.sh: wrote $svg" >&2
