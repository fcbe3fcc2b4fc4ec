//! The alloc server's subcommands: `alloc query`, `alloc dump`, `alloc load`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};

use crate::alloc::ingest::ListenerKind;
use crate::alloc::proto;
use crate::alloc::query::QueryClient;
use crate::alloc::service::parse_listener;
use crate::daemon::CliContext;

mod load;

/// The subcommands, for the service's `commands()`.
pub fn commands() -> Vec<Command> {
    vec![Command::new("alloc")
        .about("Query the alloc server's ledger, dump it, or load it with a test workload.")
        .subcommand_required(true)
        .arg(
            Arg::new("alloc-socket")
                .long("alloc-socket")
                .value_name("PATH")
                .global(true)
                .value_parser(value_parser!(PathBuf))
                .help("The alloc server's native socket (default: the first native listener of [alloc] listeners, in the runtime dir)."),
        )
        .subcommand(
            Command::new("query")
                .about("Usage per device and type against capacity, and the server's counters.")
                .long_about(
                    "Ask the running daemon's alloc server for the usage of every device (or \
                     --device N): bytes per buffer type (DRAM, L1, SYSTEM_MEMORY, L1_SMALL, \
                     TRACE), CBs and kernels, against the device table's capacities; then the \
                     processes holding memory and the server's counters (unknown frees, gaps \
                     skipped, reports clients dropped, ...). --json prints the same as JSON.",
                )
                .arg(
                    Arg::new("device")
                        .long("device")
                        .short('d')
                        .value_name("N")
                        .value_parser(value_parser!(i32))
                        .help("Only this device."),
                )
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print JSON.")),
        )
        .subcommand(
            Command::new("dump")
                .about("Every allocation still in the ledger (buffers, CBs, kernels).")
                .arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print JSON.")),
        )
        .subcommand(load::command())]
}

/// Runs `alloc <sub>`.
pub fn run(name: &str, matches: &ArgMatches, cx: &CliContext) -> ExitCode {
    debug_assert_eq!(name, "alloc");
    let socket = match matches.get_one::<PathBuf>("alloc-socket") {
        Some(p) => p.clone(),
        None => match native_socket(cx) {
            Some(p) => p,
            None => {
                eprintln!("error: [alloc] listeners has no listener; pass --alloc-socket PATH");
                return ExitCode::FAILURE;
            }
        },
    };
    let client = QueryClient::connect(&socket, cx.timeout);
    let mut client = match client {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}\nhint: is `corelane run` running with [alloc] enabled = true?");
            return ExitCode::FAILURE;
        }
    };
    let result = match matches.subcommand() {
        Some(("query", m)) => query(&mut client, m),
        Some(("dump", m)) => dump(&mut client, m),
        Some(("load", m)) => {
            let target = load::LoadTarget { native: &socket, legacy: legacy_socket(cx) };
            match load::run(&mut client, &target, m) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::FAILURE, // the report says why
                Err(e) => Err(e),
            }
        }
        _ => Err("unknown alloc subcommand".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The first native listener's path (else the first listener's: native clients are
/// recognised on every listener).
pub fn native_socket(cx: &CliContext) -> Option<PathBuf> {
    let dir = cx.socket.parent()?.to_owned();
    let specs: Vec<_> =
        cx.config.alloc.listeners.iter().filter_map(|l| parse_listener(l, &dir).ok()).collect();
    specs.iter().find(|s| s.kind == ListenerKind::Native).or(specs.first()).map(|s| s.path.clone())
}

/// The first listener that reads TT-Metal v4 records (`tt-metal` or `tt-metal-v4`).
pub fn legacy_socket(cx: &CliContext) -> Option<PathBuf> {
    use crate::alloc::legacy::LayoutChoice;
    use crate::alloc::Layout;
    let dir = cx.socket.parent()?.to_owned();
    cx.config
        .alloc
        .listeners
        .iter()
        .filter_map(|l| parse_listener(l, &dir).ok())
        .find(|s| {
            matches!(
                s.kind,
                ListenerKind::Legacy(LayoutChoice::Auto | LayoutChoice::Pinned(Layout::TtMetalV4))
            )
        })
        .map(|s| s.path)
}

fn query(client: &mut QueryClient, m: &ArgMatches) -> Result<(), String> {
    let device = m.get_one::<i32>("device").copied();
    let usage = client.usage(device).map_err(|e| e.to_string())?;
    let procs = client.processes().map_err(|e| e.to_string())?;
    if m.get_flag("json") {
        println!(
            "{}",
            serde_json::to_string_pretty(&usage_json(&usage, &procs)).unwrap_or_default()
        );
        return Ok(());
    }
    for d in &usage.devices {
        let name = if d.arch.is_empty() {
            "not in the device table".to_owned()
        } else {
            format!("{} {}", d.arch, d.board)
        };
        println!("Device {} ({name})", d.device);
        let line = |label: &str, used: u64, cap: Option<u64>| match cap {
            Some(cap) if cap > 0 => println!(
                "  {label:<14} {:>12} / {:>12}  {:5.1}%",
                bytes(used),
                bytes(cap),
                used as f64 * 100.0 / cap as f64
            ),
            _ => println!("  {label:<14} {:>12}", bytes(used)),
        };
        line("DRAM", d.dram, Some(d.dram_capacity));
        line("L1", d.l1, Some(d.l1_capacity));
        line("SYSTEM_MEMORY", d.system_memory, None);
        line("L1_SMALL", d.l1_small, None);
        line("TRACE", d.trace, None);
        line("CB", d.cb, None);
        line("KERNEL", d.kernel, None);
        println!("  buffers {}, CBs {}, kernels {}", d.num_buffers, d.num_cbs, d.num_kernels);
    }
    if !procs.processes.is_empty() {
        println!("Processes:");
        println!(
            "  {:>8}  {:<16} {:>3}  {:>12} {:>12} {:>12} {:>12}",
            "PID", "NAME", "DEV", "DRAM", "L1", "CB", "KERNEL"
        );
        for p in &procs.processes {
            println!(
                "  {:>8}  {:<16} {:>3}  {:>12} {:>12} {:>12} {:>12}",
                p.pid,
                short_name(&p.name),
                p.device,
                bytes(p.dram),
                bytes(p.l1),
                bytes(p.cb),
                bytes(p.kernel)
            );
        }
    }
    if let Some(c) = &usage.counters {
        println!(
            "Counters: events {}, invalid {}, unknown frees {}, duplicate allocs {}, gaps skipped {} ({} seqs), late {}, reordered {}, dropped by clients {}, processes released {}, connections {}, rings {}",
            c.events, c.invalid, c.unknown_frees, c.duplicate_allocs, c.gaps_skipped, c.seqs_skipped, c.late, c.reordered, c.client_dropped, c.processes_released, c.connections, c.rings
        );
    }
    Ok(())
}

fn dump(client: &mut QueryClient, m: &ArgMatches) -> Result<(), String> {
    let dump = client.dump().map_err(|e| e.to_string())?;
    if m.get_flag("json") {
        let allocations: Vec<_> = dump
            .allocations
            .iter()
            .map(|a| {
                serde_json::json!({
                    "kind": match a.kind { 1 => "buffer", 2 => "cb", _ => "kernel" },
                    "device": a.device, "buffer_id": a.buffer_id, "size": a.size,
                    "buffer_type": a.buffer_type, "pid": a.pid, "ref_count": a.ref_count,
                })
            })
            .collect();
        let doc = serde_json::json!({ "allocations": allocations, "omitted": dump.omitted });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return Ok(());
    }
    println!("{}", dump.report);
    if dump.omitted > 0 {
        println!("({} more entries not listed)", dump.omitted);
    }
    Ok(())
}

fn usage_json(usage: &proto::UsageReply, procs: &proto::ProcessUsageReply) -> serde_json::Value {
    let devices: Vec<_> = usage
        .devices
        .iter()
        .map(|d| {
            serde_json::json!({
                "device": d.device, "arch": d.arch, "board": d.board,
                "dram": d.dram, "l1": d.l1, "system_memory": d.system_memory,
                "l1_small": d.l1_small, "trace": d.trace, "cb": d.cb, "kernel": d.kernel,
                "kernel_application": d.kernel_application, "kernel_fabric": d.kernel_fabric,
                "kernel_dispatch": d.kernel_dispatch, "num_buffers": d.num_buffers,
                "num_cbs": d.num_cbs, "num_kernels": d.num_kernels,
                "dram_capacity": d.dram_capacity, "l1_capacity": d.l1_capacity,
            })
        })
        .collect();
    let processes: Vec<_> = procs
        .processes
        .iter()
        .map(|p| {
            serde_json::json!({
                "pid": p.pid, "uid": p.uid, "name": p.name, "device": p.device, "dram": p.dram, "l1": p.l1,
                "system_memory": p.system_memory, "l1_small": p.l1_small, "trace": p.trace,
                "cb": p.cb, "kernel": p.kernel, "buffers": p.buffers, "cbs": p.cbs,
                "kernels": p.kernels,
            })
        })
        .collect();
    let c = usage.counters.unwrap_or_default();
    serde_json::json!({
        "version": usage.version,
        "devices": devices,
        "processes": processes,
        "counters": {
            "events": c.events, "invalid": c.invalid, "unknown_frees": c.unknown_frees,
            "duplicate_allocs": c.duplicate_allocs, "gaps_skipped": c.gaps_skipped,
            "seqs_skipped": c.seqs_skipped, "late": c.late, "reordered": c.reordered,
            "client_dropped": c.client_dropped, "processes_released": c.processes_released,
            "entries_released": c.entries_released, "after_release": c.after_release,
            "resync_bytes": c.resync_bytes, "error_closes": c.error_closes, "rings": c.rings,
            "ring_corruptions": c.ring_corruptions, "connections": c.connections,
        },
    })
}

/// Bytes in 1024 steps with one decimal ("2.5GB", "31.9GB"), as tt_smi_umd shows them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[unit])
    }
}

/// A process name cut to 15 characters plus "..." when longer than 18.
pub fn short_name(name: &str) -> String {
    if name.chars().count() > 18 {
        format!("{}...", name.chars().take(15).collect::<String>())
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_tt_smi_shows_them() {
        assert_eq!(bytes(34_225_520_640), "31.9GB");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(2560), "2.5KB");
        assert_eq!(short_name("a_very_long_process_name"), "a_very_long_pro...");
        assert_eq!(short_name("short"), "short");
    }
}
