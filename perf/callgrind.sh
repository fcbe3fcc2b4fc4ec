#!/usr/bin/env bash
# Exact instructions per operation of the hot paths, under callgrind: each op runs N and 2N
# times; (Ir(2N) - Ir(N)) / N cancels start-up and set-up. A repeatable regression number.
#   bash perf/callgrind.sh            N = 100000
#   bash perf/callgrind.sh --quick    N = 2000 (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
n=100000
if [ "${1:-}" = "--quick" ]; then n=2000; fi
if ! command -v valgrind >/dev/null; then
    echo "SKIPPED: valgrind is not installed (apt-get install valgrind); no callgrind counts" >&2
    exit 3
fi
export CARGO_TARGET_DIR=target/profiling
RUSTFLAGS="-C force-frame-pointers=yes" cargo build --profile profiling -p corelane-perf --bin ops >&2
bin=target/profiling/profiling/ops
out=target/callgrind
mkdir -p "$out"
ir() { # op iterations -> total Ir of the run; a failed op stops the script (inside $(...)
    # set -e is off, and callgrind writes its summary even when the program fails)
    if ! valgrind --tool=callgrind --callgrind-out-file="$out/$1.$2.out" "$bin" "$1" "$2" \
        2>"$out/$1.$2.log"; then
        echo "callgrind.sh: ops $1 $2 failed under valgrind:" >&2
        tail -5 "$out/$1.$2.log" >&2
        return 1
    fi
    awk '/^summary:/ { print $2 }' "$out/$1.$2.out"
}
printf '| op | N | Ir(N) | Ir(2N) | instructions/op |\n|---|---|---|---|---|\n'
for op in spsc-push-pop shm-push-pop seqlock-write-256B seqlock-read-256B alloc-apply-pair frame-decode-64B; do
    a=$(ir "$op" "$n") || exit 1
    b=$(ir "$op" $((2 * n))) || exit 1
    printf '| %s | %d | %d | %d | %s |\n' "$op" "$n" "$a" "$b" \
        "$(awk -v a="$a" -v b="$b" -v n="$n" 'BEGIN { printf "%.1f", (b - a) / n }')"
done
