#!/usr/bin/env bash
# What of this machine matters to a latency number: prints one "key: value" per line.
#   bash perf/machine.sh
set -uo pipefail
show() { printf '%-22s %s\n' "$1:" "$2"; }
rd() { if [ -r "$1" ]; then tr '\n' ' ' <"$1" | sed 's/ *$//'; else echo "(unavailable: $1)"; fi; }
show "cpu model" "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
show "cpus online" "$(rd /sys/devices/system/cpu/online)"
show "kernel" "$(uname -srm)"
iso=$(rd /sys/devices/system/cpu/isolated); show "isolated cpus" "${iso:-(none)}"
cmd=$(tr ' ' '\n' </proc/cmdline | grep -E '^(isolcpus|nohz_full|rcu_nocbs)=' | tr '\n' ' ')
show "cmdline isol/nohz" "${cmd:-(none)}"
show "governor (cpu0)" "$(rd /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor)"
show "THP enabled" "$(rd /sys/kernel/mm/transparent_hugepage/enabled)"
show "THP defrag" "$(rd /sys/kernel/mm/transparent_hugepage/defrag)"
show "hugepages (2M) total" "$(rd /proc/sys/vm/nr_hugepages)"
show "io_uring_disabled" "$(rd /proc/sys/kernel/io_uring_disabled) (0 = allowed, 1 = privileged only, 2 = off)"
show "perf_event_paranoid" "$(rd /proc/sys/kernel/perf_event_paranoid)"
# The whole output is taken before it is matched: `perf ... | grep -q` under pipefail failed
# whenever grep's early exit killed perf with SIGPIPE, and printed "yes" at random.
if ! command -v perf >/dev/null; then
    hw="unknown (perf is not installed)"
elif ! perf stat -e cpu-clock true >/dev/null 2>&1; then
    hw="unknown (perf does not run here: a wrapper without the kernel's tools, or perf_event_paranoid)"
else
    out=$(perf stat -e cycles true 2>&1 || true)
    case $out in
        *"not supported"* | *"not counted"*) hw="no (perf/record.sh uses -e cpu-clock)" ;;
        *) hw=yes ;;
    esac
fi
show "hw cycles counter" "$hw"
show "load average" "$(cut -d' ' -f1-3 /proc/loadavg)"
