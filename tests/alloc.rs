//! The alloc server against real clients: `corelane run` as a child process (its own runtime
//! dir and config, every listener inside it), and clients speaking the protocols as the
//! originals do: raw TT-Metal v4 (128 B) and v5 (144 B) records built from
//! `corelane::alloc::wire`, and native canonical frames with `EventBody`s.
//!
//! - `s*`: the server behaviours of `alloc-server-reference.md` §7 that apply, each over v4,
//!   v5 and native (a module per behaviour, a test per protocol) where the behaviour exists in
//!   that protocol;
//! - v4/v5 detection on one `tt-metal` listener, a listener pinned to the wrong layout, garbage
//!   and old-protocol clients beside well-behaved ones, 1000 concurrent connections;
//! - a client process killed with SIGKILL (native socket and a shared-memory ring), a client
//!   that corrupts its own ring;
//! - the native queries (usage with capacities, device info, per-process usage, dump,
//!   subscription pushes).
//!
//! Child processes are this test binary re-executed with [`CHILD_ENV`] set (as
//! `tests/channel.rs` does).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corelane::alloc::proto;
use corelane::alloc::wire::{Event, Layout, MsgType, RingRecord, MAX_ALLOC_SIZE};
use corelane::channel::{recv_with_fd, ClientTx};
use corelane::wire::{Decoder, DecoderConfig, Event as WireEvent, Flags};
use prost::Message;
use support::*;

const GIB: u64 = 1 << 30;
/// One n300 chip: 12 x 1 GiB DRAM.
const N300_DRAM: u64 = 12 * GIB;
/// One n300 chip: 64 worker cores x 1,499,136 B L1.
const N300_L1: u64 = 64 * 1_499_136;

const CHILD_ENV: &str = "CORELANE_ALLOC_TEST_CHILD";
const CHILD_DIR_ENV: &str = "CORELANE_ALLOC_TEST_DIR";

/// One test per protocol for a behaviour `fn name(via: Via)`.
macro_rules! over {
    ($name:ident: $($via:ident),+) => {
        mod $name {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $via() {
                    super::$name(super::Via::$via)
                }
            )+
        }
    };
}

fn rig(name: &str, via: Via) -> Rig {
    Rig::start(&format!("{name}-{}", via.name()))
}

fn me() -> u32 {
    std::process::id()
}

// ---------------------------------------------------------------------------------------------
// S1: the socket file.
// ---------------------------------------------------------------------------------------------

#[test]
fn s1_stale_socket_files_are_replaced_and_removed_on_sigterm_with_exit_0() {
    let setup = Setup::default();
    let mut rig = Rig::prepare("s1", &setup);
    let listeners =
        [Listener::Native, Listener::Auto, Listener::V4, Listener::V5, Listener::Compact];
    // A crashed server's files: sockets nobody listens on.
    for l in listeners {
        drop(std::os::unix::net::UnixListener::bind(rig.path(l)).unwrap());
        assert!(rig.path(l).exists());
        // A child another test thread forks holds a copy of the listener until its exec
        // closes it (CLOEXEC): the socket refuses connections once that copy is gone.
        let path = rig.path(l);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&path).is_ok() {
            assert!(Instant::now() < deadline, "a stale socket refuses connections");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    rig.launch(&setup);
    for l in listeners {
        UnixStream::connect(rig.path(l))
            .unwrap_or_else(|e| panic!("{l:?} listener is live after start: {e}"));
    }
    // The legacy socket answers as the original.
    let mut v4 = Legacy::connect(&rig.path(Listener::Auto), Layout::TtMetalV4);
    assert_eq!(v4.query(0).head.msg_type, MsgType::Response.code() as u8);
    drop(v4);
    let status = rig.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    for l in listeners {
        assert!(!rig.path(l).exists(), "{l:?} socket file removed at shutdown");
    }
}

// ---------------------------------------------------------------------------------------------
// S2-S14: the ledger and the replies.
// ---------------------------------------------------------------------------------------------

fn s2_alloc_then_query_reports_exactly_that_dram(via: Via) {
    let rig = rig("s2", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 0, 0x1000, 4096);
    assert_eq!(c.usage(0), Usage { dram: 4096, ..Usage::default() });
    if let Client::Legacy(l) = &mut c {
        // Every other field of the RESPONSE is zero.
        let r = l.query(0);
        let mut want = V4RecordExt::zero();
        want.head.msg_type = MsgType::Response.code() as u8;
        want.dram_allocated = 4096.into();
        assert_eq!(r, want);
    }
}
over!(s2_alloc_then_query_reports_exactly_that_dram: V4, V5, Native);

/// A zeroed v4 record (the expected RESPONSE of a test, filled in).
struct V4RecordExt;
impl V4RecordExt {
    fn zero() -> corelane::alloc::wire::V4Record {
        zerocopy::FromZeros::new_zeroed()
    }
}

fn s3_buffer_types_map_to_their_counters(via: Via) {
    let rig = rig("s3", via);
    let mut c = Client::connect(&rig, via);
    for (t, size) in [(0u8, 1000u64), (1, 2000), (2, 3000), (3, 4000), (4, 5000)] {
        c.alloc(0, t, 0x10_0000 + u64::from(t) * 0x1000, size);
    }
    // SYSTEM_MEMORY counts as L1_SMALL in a legacy RESPONSE, as in the original.
    let want = Usage { dram: 1000, l1: 2000, l1_small: 3000 + 4000, trace: 5000, cb: 0, kernel: 0 };
    assert_eq!(c.usage(0), want);
    // The native reply keeps SYSTEM_MEMORY and L1_SMALL apart.
    let d = &rig.usage().devices[0];
    assert_eq!((d.system_memory, d.l1_small, d.num_buffers), (3000, 4000, 5));
}
over!(s3_buffer_types_map_to_their_counters: V4, V5, Native);

fn s4_alloc_on_device_minus_1_or_8_is_ignored_logged_and_the_connection_stays(via: Via) {
    let rig = rig("s4", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(-1, 0, 0x1000, 4096);
    c.alloc(8, 0, 0x2000, 4096);
    c.alloc(0, 0, 0x3000, 512);
    assert_eq!(c.usage(0), Usage { dram: 512, ..Usage::default() });
    let u = rig.usage();
    assert_eq!(u.devices.iter().map(|d| d.num_buffers).sum::<u64>(), 1);
    assert_eq!(u.counters.unwrap().invalid, 2);
    let line = rig.wait_log(&["invalid device_id -1", &format!("from pid {}", me())]);
    assert!(line.contains("WARN"), "{line}");
}
over!(s4_alloc_on_device_minus_1_or_8_is_ignored_logged_and_the_connection_stays: V4, V5, Native);

fn s5_alloc_of_size_0_or_over_100_gib_is_ignored(via: Via) {
    let rig = rig("s5", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 0, 0x1000, 0);
    c.alloc(0, 0, 0x2000, MAX_ALLOC_SIZE + 1);
    c.alloc(0, 0, 0x3000, u64::MAX);
    assert_eq!(c.usage(0), Usage::default());
    c.alloc(0, 0, 0x4000, MAX_ALLOC_SIZE); // the bound itself is allowed
    assert_eq!(c.usage(0).dram, MAX_ALLOC_SIZE);
    assert_eq!(rig.counters().invalid, 3);
}
over!(s5_alloc_of_size_0_or_over_100_gib_is_ignored: V4, V5, Native);

fn s6_alloc_of_buffer_type_5_or_more_is_ignored(via: Via) {
    let rig = rig("s6", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 5, 0x1000, 4096);
    c.alloc(0, 255, 0x2000, 4096);
    assert_eq!(c.usage(0), Usage::default());
    assert_eq!(rig.counters().invalid, 2);
    assert!(rig.dump().allocations.is_empty());
}
over!(s6_alloc_of_buffer_type_5_or_more_is_ignored: V4, V5, Native);

fn s7_s8_duplicate_alloc_counts_once_with_ref_count_2_and_frees_step_down(via: Via) {
    let rig = rig("s7-s8", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 1, 0xA000, 8192);
    c.alloc(0, 1, 0xA000, 8192);
    assert_eq!(c.usage(0), Usage { l1: 8192, ..Usage::default() });
    assert_eq!(entries_of(&rig.dump(), me()), vec![(1, 0, 0xA000, 8192, 2)], "ref_count 2");
    assert_eq!(rig.counters().duplicate_allocs, 1);
    // S8: the first FREE leaves the counters (ref 1), the second removes, the third is unknown.
    c.free(0, 0xA000);
    assert_eq!(c.usage(0).l1, 8192);
    assert_eq!(entries_of(&rig.dump(), me()), vec![(1, 0, 0xA000, 8192, 1)]);
    c.free(0, 0xA000);
    assert_eq!(c.usage(0), Usage::default());
    assert!(entries_of(&rig.dump(), me()).is_empty());
    assert_eq!(rig.counters().unknown_frees, 0);
    c.free(0, 0xA000);
    assert_eq!(c.usage(0), Usage::default());
    assert_eq!(rig.counters().unknown_frees, 1);
}
over!(s7_s8_duplicate_alloc_counts_once_with_ref_count_2_and_frees_step_down: V4, V5, Native);

fn s9_free_uses_the_stored_size_and_type_not_the_message_fields(via: Via) {
    let rig = rig("s9", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 1, 0xB000, 8192);
    c.alloc(0, 0, 0xC000, 4096);
    // Garbage size and type in the FREE: DRAM type, a huge size.
    c.event(MsgType::Free, 0, 0, 0xB000, 999_999_999);
    assert_eq!(c.usage(0), Usage { dram: 4096, ..Usage::default() });
    c.event(MsgType::Free, 0, 77, 0xC000, 1);
    assert_eq!(c.usage(0), Usage::default());
}
over!(s9_free_uses_the_stored_size_and_type_not_the_message_fields: V4, V5, Native);

fn s10_free_of_a_never_seen_key_changes_nothing_and_never_underflows(via: Via) {
    let rig = rig("s10", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 0, 0x1000, 4096);
    for id in [0x2000u64, 0x3000, 0x1001, u64::MAX] {
        c.free(0, id);
    }
    c.free(1, 0x1000); // the same address on another device is another key
    assert_eq!(c.usage(0), Usage { dram: 4096, ..Usage::default() });
    assert_eq!(c.usage(1), Usage::default());
    assert_eq!(rig.counters().unknown_frees, 5);
}
over!(s10_free_of_a_never_seen_key_changes_nothing_and_never_underflows: V4, V5, Native);

fn s11_the_same_buffer_id_on_two_devices_is_two_entries(via: Via) {
    let rig = rig("s11", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 0, 0x5000, 1 << 20);
    c.alloc(1, 0, 0x5000, 2 << 20);
    assert_eq!(c.usage(0).dram, 1 << 20);
    assert_eq!(c.usage(1).dram, 2 << 20);
    c.free(1, 0x5000);
    assert_eq!(c.usage(0).dram, 1 << 20, "device 0 untouched");
    assert_eq!(c.usage(1).dram, 0);
    assert_eq!(entries_of(&rig.dump(), me()), vec![(1, 0, 0x5000, 1 << 20, 1)]);
}
over!(s11_the_same_buffer_id_on_two_devices_is_two_entries: V4, V5, Native);

fn s12_query_of_a_device_out_of_range_is_zero_filled_and_echoes_the_id(via: Via) {
    let rig = rig("s12", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 0, 0x1000, 4096);
    c.event(MsgType::CbAlloc, 0, 0, 0x10, 2048);
    for device in [9, -3, 8, 1000] {
        match &mut c {
            Client::Legacy(l) => {
                let r = l.query(device);
                let mut want = V4RecordExt::zero();
                want.head.msg_type = MsgType::Response.code() as u8;
                want.head.device_id = device.into();
                assert_eq!(r, want, "device {device}");
            }
            Client::Native(n) => {
                let d = n.usage(device);
                assert_eq!(d, proto::DeviceUsage { device, ..Default::default() });
            }
        }
    }
    // Not disconnected.
    assert_eq!(c.usage(0), Usage { dram: 4096, cb: 2048, ..Usage::default() });
}
over!(s12_query_of_a_device_out_of_range_is_zero_filled_and_echoes_the_id: V4, V5, Native);

fn s13_device_info_minus_1_gives_the_device_count(via: Via) {
    let rig = rig("s13", via);
    match Client::connect(&rig, via) {
        Client::Legacy(mut l) => {
            let r = l.device_info(-1);
            assert_eq!(r.head.msg_type, MsgType::DeviceInfoResponse.code() as u8);
            assert_eq!(r.head.device_id.get(), -1);
            assert_eq!(r.num_devices.get(), 2);
            assert_eq!(r.is_available.get(), 1);
        }
        Client::Native(mut n) => {
            let r: proto::DeviceInfoReply =
                n.request(MsgType::DeviceInfoQuery, &proto::DeviceInfoRequest { device: -1 });
            assert_eq!(r.num_devices, 2);
            assert_eq!(r.devices.iter().map(|d| d.device).collect::<Vec<_>>(), [0, 1]);
            assert!(r.devices.iter().all(|d| d.available));
        }
    }
}
over!(s13_device_info_minus_1_gives_the_device_count: V4, V5, Native);

fn s14_device_info_of_a_device_gives_its_table_entry(via: Via) {
    let rig = rig("s14", via);
    match Client::connect(&rig, via) {
        Client::Legacy(mut l) => {
            for device in [0, 1] {
                let r = l.device_info(device);
                assert_eq!(r.head.msg_type, MsgType::DeviceInfoResponse.code() as u8);
                assert_eq!(r.head.device_id.get(), device);
                assert_eq!(r.is_available.get(), 1);
                assert_eq!(r.arch_type.get(), 2, "Wormhole_B0");
                assert_eq!(r.num_dram_channels.get(), 12);
                assert_eq!(u64::from(r.dram_size_per_channel.get()), GIB);
                assert_eq!(r.l1_size_per_core.get(), 1_499_136);
                assert_eq!(r.total_dram_size.get(), N300_DRAM, "channels x per channel");
                assert_eq!(r.total_l1_size.get(), N300_L1);
            }
            for device in [2, 5, 7] {
                let r = l.device_info(device);
                assert_eq!(r.is_available.get(), 0, "device {device} is not configured");
                assert_eq!(r.total_dram_size.get(), 0);
            }
        }
        Client::Native(mut n) => {
            let r: proto::DeviceInfoReply =
                n.request(MsgType::DeviceInfoQuery, &proto::DeviceInfoRequest { device: 1 });
            let d = &r.devices[0];
            assert_eq!(
                (d.device, d.available, d.arch_type, d.arch.as_str(), d.board.as_str()),
                (1, true, 2, "Wormhole_B0", "n300")
            );
            assert_eq!((d.dram_channels, d.dram_per_channel, d.l1_per_core), (12, GIB, 1_499_136));
            assert_eq!((d.cores, d.dram_capacity, d.l1_capacity), (64, N300_DRAM, N300_L1));
            let r: proto::DeviceInfoReply =
                n.request(MsgType::DeviceInfoQuery, &proto::DeviceInfoRequest { device: 5 });
            assert_eq!(r.devices, [proto::DeviceInfo { device: 5, ..Default::default() }]);
        }
    }
}
over!(s14_device_info_of_a_device_gives_its_table_entry: V4, V5, Native);

// ---------------------------------------------------------------------------------------------
// S15, S17, S18, S20.
// ---------------------------------------------------------------------------------------------

fn s15_dump_remaining_sends_no_bytes_and_the_next_query_gets_exactly_its_reply(via: Via) {
    let rig = rig("s15", via);
    let Client::Legacy(mut l) = Client::connect(&rig, via) else { unreachable!() };
    l.send(MsgType::Alloc, 0, 4096, 0, 0x1000);
    l.send(MsgType::DumpRemaining, 0, 0, 0, 0);
    l.send(MsgType::DumpRemaining, 0, 0, 0, 0);
    // Bytes the dumps sent would come before the reply and misalign it.
    let r = l.query(0);
    let mut want = V4RecordExt::zero();
    want.head.msg_type = MsgType::Response.code() as u8;
    want.dram_allocated = 4096.into();
    assert_eq!(r, want);
    // And nothing after it.
    l.stream.set_nonblocking(true).unwrap();
    let mut extra = [0u8; 1];
    let e = l.stream.read(&mut extra).expect_err("no byte after the reply");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    // The report went to the log, once: dump reports are logged at most once a second, so a
    // flood of them cannot flood the log.
    rig.wait_log(&["DUMP_REMAINING from pid"]);
    assert_eq!(rig.log_lines(&["DUMP_REMAINING from pid"]).len(), 1);
}
over!(s15_dump_remaining_sends_no_bytes_and_the_next_query_gets_exactly_its_reply: V4, V5);

/// The native counterpart of S15: DUMP_REMAINING gets exactly one report body, then the next
/// query gets its own reply.
#[test]
fn s15_native_dump_remaining_gets_one_report_and_the_next_query_its_reply() {
    let rig = Rig::start("s15-native");
    let mut n = Native::connect(&rig.path(Listener::Native));
    n.event(MsgType::Alloc, 0, 0, 0x1000, 4096);
    let dump: proto::DumpReply = n.request(MsgType::DumpRemaining, &proto::DumpRequest {});
    assert_eq!(dump.allocations.len(), 1);
    assert!(dump.report.contains("Total"), "{}", dump.report);
    assert_eq!(n.usage(0).dram, 4096);
    assert_eq!(n.pending(), 0, "no stray frames");
}

fn s17_cb_alloc_and_free_move_cb_allocated_and_unknown_cb_free_does_not_underflow(via: Via) {
    let rig = rig("s17", via);
    let mut c = Client::connect(&rig, via);
    c.event(MsgType::CbAlloc, 0, 0, 0x40, 65536);
    assert_eq!(c.usage(0), Usage { cb: 65536, ..Usage::default() });
    c.event(MsgType::CbFree, 0, 0, 0x40, 65536);
    assert_eq!(c.usage(0), Usage::default());
    // Unknown CB_FREE with a size: the original subtracted it and wrapped.
    c.event(MsgType::CbFree, 0, 0, 0x40, 65536);
    c.event(MsgType::CbFree, 0, 0, 0x99, 1 << 40);
    assert_eq!(c.usage(0), Usage::default());
    c.event(MsgType::CbAlloc, 0, 0, 0x41, 1000);
    c.event(MsgType::CbFree, 0, 0, 0x42, 999_999);
    // CB_FREE of a live key with a wrong size: the stored size.
    c.event(MsgType::CbAlloc, 0, 0, 0x43, 500);
    c.event(MsgType::CbFree, 0, 0, 0x43, 7);
    assert_eq!(c.usage(0), Usage { cb: 1000, ..Usage::default() });
    assert_eq!(rig.counters().unknown_frees, 3);
}
over!(s17_cb_alloc_and_free_move_cb_allocated_and_unknown_cb_free_does_not_underflow: V4, V5, Native);

fn s18_kernel_load_and_unload_move_the_total_and_the_kind_counter(via: Via) {
    let rig = rig("s18", via);
    let mut c = Client::connect(&rig, via);
    c.event(MsgType::KernelLoad, 0, 1, 0x77, 56 * 1024); // fabric
    c.event(MsgType::KernelLoad, 0, 2, 0x78, 46 * 1024); // dispatch
    assert_eq!(c.usage(0).kernel, 102 * 1024);
    let d = rig.usage().devices[0].clone();
    assert_eq!((d.kernel_fabric, d.kernel_dispatch, d.num_kernels), (56 * 1024, 46 * 1024, 2));
    c.event(MsgType::KernelUnload, 0, 0, 0x77, 1); // the stored size and kind count
    assert_eq!(c.usage(0).kernel, 46 * 1024);
    let d = rig.usage().devices[0].clone();
    assert_eq!((d.kernel_fabric, d.kernel_dispatch), (0, 46 * 1024));
    c.event(MsgType::KernelUnload, 0, 1, 0x1234, 56 * 1024); // unknown
    assert_eq!(c.usage(0).kernel, 46 * 1024);
    assert_eq!(rig.usage().devices[0].kernel_fabric, 0);
    assert_eq!(rig.counters().unknown_frees, 1);
}
over!(s18_kernel_load_and_unload_move_the_total_and_the_kind_counter: V4, V5, Native);

fn s20_a_client_that_closes_without_exiting_keeps_its_entries(via: Via) {
    let rig = rig("s20", via);
    let mut c = Client::connect(&rig, via);
    c.alloc(0, 0, 0x1000, 4096);
    c.event(MsgType::CbAlloc, 0, 0, 0x20, 1024);
    c.event(MsgType::KernelLoad, 0, 0, 0x30, 2048);
    let _ = c.usage(0); // applied
    drop(c);
    // The close is seen (only this query's connection is left) and nothing is released.
    let u = rig.wait_usage("the client's close", |u| u.counters.unwrap().connections == 1);
    assert_eq!(u.counters.unwrap().processes_released, 0);
    let d = &u.devices[0];
    assert_eq!((d.dram, d.cb, d.kernel), (4096, 1024, 2048));
    assert_eq!(entries_of(&rig.dump(), me()).len(), 3);
}
over!(s20_a_client_that_closes_without_exiting_keeps_its_entries: V4, V5, Native);

// ---------------------------------------------------------------------------------------------
// S22-S26: framing.
// ---------------------------------------------------------------------------------------------

fn s22_one_junk_byte_is_discarded_and_the_next_record_is_processed(via: Via) {
    let rig = rig("s22", via);
    let Client::Legacy(mut l) = Client::connect(&rig, via) else { unreachable!() };
    let layout = l.layout;
    let mut bytes = vec![0xEE];
    bytes.extend(record(layout, 1, 0, 4096, 0, 0x1000));
    bytes.push(200);
    bytes.extend(record(layout, 1, 0, 4096, 1, 0x2000));
    l.raw(&bytes);
    assert_eq!(Usage::of_v4(&l.query(0)), Usage { dram: 4096, l1: 4096, ..Usage::default() });
    assert_eq!(rig.counters().resync_bytes, 2);
}
over!(s22_one_junk_byte_is_discarded_and_the_next_record_is_processed: V4, V5);

fn s23_ten_consecutive_invalid_type_bytes_close_that_connection_only(via: Via) {
    let rig = rig("s23", via);
    let layout = via.layout().unwrap();
    let path = rig.path(Listener::Auto);
    let mut other = Legacy::connect(&path, layout);
    other.send(MsgType::Alloc, 0, 4096, 0, 0x1000);
    assert_eq!(other.query(0).dram_allocated.get(), 4096);
    let mut bad = Legacy::connect(&path, layout);
    // Nine junk bytes and a good record: the streak resets, the connection stays.
    let mut bytes = vec![0xEE; 9];
    bytes.extend(record(layout, 1, 0, 100, 0, 0x2000));
    bad.raw(&bytes);
    assert_eq!(bad.query(0).dram_allocated.get(), 4196);
    // Ten in a row: closed.
    bad.raw(&[0xEE; 10]);
    let (closed, got) = bad.closed_within(DEADLINE);
    assert!(closed && got.is_empty(), "closed without a reply: {closed} {got:?}");
    let line = rig.wait_log(&["too many consecutive errors (10)", &format!("pid {}", me())]);
    assert!(line.contains("closing"), "{line}");
    assert_eq!(rig.counters().error_closes, 1);
    // The others and a new connection keep working.
    other.send(MsgType::Alloc, 0, 1, 0, 0x3000);
    assert_eq!(other.query(0).dram_allocated.get(), 4197);
    let mut new = Legacy::connect(&path, layout);
    assert_eq!(new.query(0).dram_allocated.get(), 4197);
}
over!(s23_ten_consecutive_invalid_type_bytes_close_that_connection_only: V4, V5);

fn s24_response_and_device_info_response_from_a_client_are_unknown_and_the_connection_stays(
    via: Via,
) {
    let setup = Setup { log: "info,corelane::alloc=debug".into(), ..Setup::default() };
    let rig = Rig::start_with(&format!("s24-{}", via.name()), &setup);
    let Client::Legacy(mut l) = Client::connect(&rig, via) else { unreachable!() };
    l.send(MsgType::Response, 0, 4096, 0, 0x1000);
    l.send(MsgType::DeviceInfoResponse, 0, 4096, 0, 0x1000);
    l.send(MsgType::Alloc, 0, 4096, 0, 0x1000);
    assert_eq!(Usage::of_v4(&l.query(0)), Usage { dram: 4096, ..Usage::default() });
    rig.wait_log(&["unknown message type 4", &format!("pid {}", me())]);
    rig.wait_log(&["unknown message type 7", &format!("pid {}", me())]);
    assert_eq!(rig.counters().error_closes, 0);
}
over!(s24_response_and_device_info_response_from_a_client_are_unknown_and_the_connection_stays: V4, V5);

fn s25_a_message_split_over_several_writes_is_one_message(via: Via) {
    let rig = rig("s25", via);
    let mut c = Client::connect(&rig, via);
    let bytes = match via.layout() {
        Some(layout) => record(layout, 1, 0, 4096, 0, 0x1000),
        None => event_frame(0, MsgType::Alloc, 0, 0, 0x1000, 4096),
    };
    // Not split at 128: a v5 connection's first 128 bytes alone would be read as v4 after the
    // detection timeout (a v4 client waiting for its reply).
    let cuts = if via == Via::Native { [1, 9, 30] } else { [1, 37, 100] };
    let chunks =
        [&bytes[..cuts[0]], &bytes[cuts[0]..cuts[1]], &bytes[cuts[1]..cuts[2]], &bytes[cuts[2]..]];
    for chunk in chunks {
        c.raw(chunk);
        c.stream().flush().unwrap();
        // Give the daemon a chance to read the part alone (correct either way).
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Client::Native(n) = &mut c {
        n.seq = 1;
    }
    c.alloc(0, 1, 0x2000, 100);
    assert_eq!(c.usage(0), Usage { dram: 4096, l1: 100, ..Usage::default() });
    let k = rig.counters();
    assert_eq!((k.invalid, k.resync_bytes, k.events), (0, 0, 2));
}
over!(s25_a_message_split_over_several_writes_is_one_message: V4, V5, Native);

fn s26_eight_clients_times_1000_alloc_free_pairs_end_at_zero(via: Via) {
    let rig = rig("s26", via);
    const CLIENTS: u64 = 8;
    const PAIRS: u64 = 1000;
    std::thread::scope(|s| {
        for t in 0..CLIENTS {
            let rig = &rig;
            s.spawn(move || {
                let mut c = Client::connect(rig, via);
                for i in 0..PAIRS {
                    // Addresses reused within a client, each client its own.
                    let id = (t << 40) | (0x10_0000 + (i % 16) * 0x1000);
                    let device = (t % 2) as i32;
                    c.alloc(device, (i % 5) as u8, id, 4096 + i);
                    if i % 7 == 0 {
                        c.event(MsgType::CbAlloc, device, 0, id, 64);
                        c.event(MsgType::CbFree, device, 0, id, 64);
                    }
                    c.free(device, id);
                }
                let _ = c.usage((t % 2) as i32); // everything sent is applied
            });
        }
    });
    let cb_pairs = CLIENTS * PAIRS.div_ceil(7);
    let u = rig.wait_events(CLIENTS * PAIRS * 2 + cb_pairs * 2);
    for d in &u.devices {
        assert_eq!(Usage::of_native(d), Usage::default(), "device {}", d.device);
        assert_eq!((d.num_buffers, d.num_cbs), (0, 0), "active allocations = 0");
    }
    let k = u.counters.unwrap();
    assert_eq!(
        (k.events, k.unknown_frees, k.duplicate_allocs, k.invalid),
        (CLIENTS * PAIRS * 2 + cb_pairs * 2, 0, 0, 0)
    );
    assert!(rig.dump().allocations.is_empty());
}
over!(s26_eight_clients_times_1000_alloc_free_pairs_end_at_zero: V4, V5, Native);

// ---------------------------------------------------------------------------------------------
// Legacy layouts: detection, pinning, garbage.
// ---------------------------------------------------------------------------------------------

#[test]
fn v4_and_v5_clients_at_once_on_one_tt_metal_listener_are_each_detected() {
    let rig = Rig::start("detect");
    let path = rig.path(Listener::Auto);
    // A v4 client whose only message is one QUERY waits for its reply: it must get it (after
    // the detection timeout, the 128 bytes alone are read as a whole v4 record).
    let mut lone = Legacy::connect(&path, Layout::TtMetalV4);
    let asked = Instant::now();
    let r = lone.query(1);
    eprintln!("a lone v4 QUERY was answered after {:?}", asked.elapsed());
    assert_eq!((r.head.msg_type, r.head.device_id.get()), (4, 1));
    // The same for a lone DEVICE_INFO_QUERY.
    let mut lone = Legacy::connect(&path, Layout::TtMetalV4);
    assert_eq!(lone.device_info(-1).num_devices.get(), 2);

    const EACH: u64 = 4;
    const ROUNDS: u64 = 300;
    std::thread::scope(|s| {
        for t in 0..2 * EACH {
            let path = &path;
            s.spawn(move || {
                let layout = if t % 2 == 0 { Layout::TtMetalV4 } else { Layout::TtMetalV5 };
                let mut c = Legacy::connect(path, layout);
                let device = (t % 2) as i32; // v4 clients on device 0, v5 on device 1
                for i in 0..ROUNDS {
                    let id = (t << 32) | i;
                    c.send(MsgType::Alloc, device, 1000, 1, id);
                    if i % 50 == 0 {
                        // A reply of this client's own size, in the middle of its stream.
                        let mut buf = vec![0u8; layout.record_len()];
                        c.send(MsgType::Query, device, 0, 0, 0);
                        c.stream.read_exact(&mut buf).unwrap();
                        assert_eq!(buf[0], 4, "a RESPONSE of {} bytes", buf.len());
                        assert_eq!(&buf[4..8], &device.to_le_bytes());
                    }
                    if i % 3 != 0 {
                        c.send(MsgType::Free, device, 0, 0, id);
                    }
                }
            });
        }
    });
    let live = ROUNDS.div_ceil(3); // per client
    let u = rig.wait_events(2 * EACH * (ROUNDS + ROUNDS - live));
    for d in &u.devices {
        assert_eq!(d.l1, EACH * live * 1000, "device {} (v{} clients)", d.device, 4 + d.device);
        assert_eq!(d.num_buffers, EACH * live);
    }
    let k = u.counters.unwrap();
    assert_eq!((k.invalid, k.resync_bytes, k.error_closes, k.unknown_frees), (0, 0, 0, 0));
}

#[test]
fn a_listener_pinned_to_the_wrong_layout_logs_one_line_naming_the_pid_and_closes() {
    let rig = Rig::start("pinned");
    let pid_tag = format!("pid {}", me());
    let warns = || rig.log_lines(&["WARN", &pid_tag]);
    // v5 records to a v4 listener.
    let mut c = Legacy::connect(&rig.path(Listener::V4), Layout::TtMetalV5);
    c.send(MsgType::Alloc, 0, 4096, 0, 0x1000);
    c.send_maybe_closed(MsgType::Alloc, 0, 4096, 0, 0x2000);
    let (closed, got) = c.closed_within(DEADLINE);
    assert!(closed && got.is_empty());
    // v4 records to a v5 listener.
    let mut c = Legacy::connect(&rig.path(Listener::V5), Layout::TtMetalV4);
    c.send(MsgType::Alloc, 0, 4096, 0, 0x3000);
    c.send_maybe_closed(MsgType::Alloc, 0, 4096, 0, 0x4000);
    let (closed, got) = c.closed_within(DEADLINE);
    assert!(closed && got.is_empty());
    // One v4 QUERY to a v5 listener, waiting for its reply: decided after the timeout.
    let mut c = Legacy::connect(&rig.path(Listener::V5), Layout::TtMetalV4);
    c.send(MsgType::Query, 0, 0, 0, 0);
    let (closed, got) = c.closed_within(DEADLINE);
    assert!(closed && got.is_empty());
    let lines = warns();
    assert_eq!(lines.len(), 3, "one line per connection: {lines:#?}");
    assert!(lines[0].contains("pinned to tt-metal-v4") && lines[0].contains("144-byte"));
    assert!(lines[1].contains("pinned to tt-metal-v5") && lines[1].contains("128-byte"));
    assert!(lines[2].contains("pinned to tt-metal-v5") && lines[2].contains("128-byte"));
    // The right layout on each listener still works.
    let mut v4 = Legacy::connect(&rig.path(Listener::V4), Layout::TtMetalV4);
    v4.send(MsgType::Alloc, 1, 10, 0, 0x10);
    assert_eq!(v4.query(1).dram_allocated.get(), 10);
    let mut v5 = Legacy::connect(&rig.path(Listener::V5), Layout::TtMetalV5);
    v5.send(MsgType::Alloc, 1, 20, 0, 0x20);
    assert_eq!(v5.query(1).dram_allocated.get(), 30);
    assert_eq!(rig.counters().error_closes, 3);
}

/// The garbage child: old-protocol and garbage clients, each reporting on stdout how its
/// connection ended. Does nothing in a normal run.
fn garbage_child(dir: &std::path::Path) {
    let rig_path = |f: &str| dir.join(f);
    std::thread::scope(|s| {
        // Seed 000's compact layout (48 B) sent to a v4 listener: old-protocol records.
        s.spawn(|| {
            let mut c = Legacy::connect(&rig_path("v4.sock"), Layout::TtMetalV4);
            let mut closed = false;
            for i in 0..2000u64 {
                let bytes = record(Layout::CompactV2, 1 + (i % 2) as u8, 0, 4096, 0, 0x1000 + i);
                if c.stream.write_all(&bytes).is_err() {
                    closed = true;
                    break;
                }
            }
            println!("compact-sent closed={closed}");
        });
        // Random bytes (a fixed seed) to the tt-metal listener.
        s.spawn(|| {
            let mut c = Legacy::connect(&rig_path("tt.sock"), Layout::TtMetalV4);
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let bytes: Vec<u8> = (0..64 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = c.stream.write_all(&bytes);
            let (closed, _) = c.closed_within(DEADLINE);
            println!("random closed={closed}");
        });
        // RESPONSE / DEVICE_INFO_RESPONSE records from a client: unknown, connection stays.
        s.spawn(|| {
            let mut c = Legacy::connect(&rig_path("tt.sock"), Layout::TtMetalV4);
            for _ in 0..50 {
                c.send(MsgType::Response, 0, 4096, 0, 0x1000);
                c.send(MsgType::DeviceInfoResponse, 0, 4096, 0, 0x1000);
            }
            let r = c.device_info(-1);
            println!("type47 answered={}", r.num_devices.get() == 2);
        });
    });
    std::io::stdout().flush().unwrap();
}

#[test]
fn alloc_test_child() {
    match std::env::var(CHILD_ENV).as_deref() {
        Ok("garbage") => {
            garbage_child(std::path::Path::new(&std::env::var(CHILD_DIR_ENV).unwrap()))
        }
        Ok("killed") => killed_child(std::path::Path::new(&std::env::var(CHILD_DIR_ENV).unwrap())),
        _ => {}
    }
}

fn spawn_child(mode: &str, rig: &Rig) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "alloc_test_child", "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD_ENV, mode)
        .env(CHILD_DIR_ENV, &rig.dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn garbage_and_old_protocol_clients_beside_well_behaved_ones_leave_their_ledger_exact() {
    let rig = Rig::start("garbage");
    let mut child = spawn_child("garbage", &rig);
    let child_pid = child.id();
    // Well-behaved clients of this process, over all three protocols, meanwhile.
    std::thread::scope(|s| {
        for (t, via) in [Via::V4, Via::V5, Via::Native].into_iter().enumerate() {
            let rig = &rig;
            s.spawn(move || {
                let mut c = Client::connect(rig, via);
                for i in 0..3000u64 {
                    let id = 0xC0DE_0000_0000 | ((t as u64) << 24) | (i % 64);
                    c.alloc(1, 0, id, 1 << 12);
                    if i < 2900 {
                        c.free(1, id);
                    }
                }
                let _ = c.usage(1);
            });
        }
    });
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "garbage child: {status}\n{stdout}");
    assert!(stdout.contains("random closed=true"), "{stdout}");
    assert!(stdout.contains("type47 answered=true"), "{stdout}");
    // This process's ledger: per client, ids (i % 64) for i in 2900..3000 stay live, the ALLOC
    // of an id that is live already bumping its ref_count.
    let dump = rig.dump();
    let mine = entries_of(&dump, me());
    let mut want = Vec::new();
    for t in 0..3u64 {
        for k in 0..64u64 {
            let live = (2900..3000u64).filter(|i| i % 64 == k).count() as u32;
            if live > 0 {
                want.push((1, 1, 0xC0DE_0000_0000 | (t << 24) | k, 1 << 12, live));
            }
        }
    }
    want.sort();
    assert_eq!(mine, want);
    let procs = rig.query().processes().unwrap();
    let p: Vec<_> = procs.processes.iter().filter(|p| p.pid == me()).collect();
    assert_eq!(p.len(), 1, "{procs:?}");
    assert_eq!((p[0].device, p[0].dram, p[0].buffers), (1, want.len() as u64 * 4096, 192));
    let k = rig.counters();
    assert!(k.invalid + k.resync_bytes > 0, "the garbage was seen: {k:?}");
    assert!(k.error_closes >= 1, "{k:?}");
    let line = rig.wait_log(&["too many consecutive errors (10)", &format!("pid {child_pid}")]);
    assert!(line.contains("WARN"));
    assert!(
        !rig.log_lines(&[&format!("pid {child_pid}"), "invalid"]).is_empty(),
        "the garbage is logged naming its pid"
    );
}

// ---------------------------------------------------------------------------------------------
// Many connections.
// ---------------------------------------------------------------------------------------------

/// Raises this process's soft descriptor limit to at least `want` (children inherit it).
fn raise_nofile(want: u64) -> Result<(), String> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_some_and(|c| c >= want) || lim.current.is_none() {
        return Ok(());
    }
    if lim.maximum.is_some_and(|m| m < want) {
        return Err(format!("the hard limit is {:?}, below {want}", lim.maximum));
    }
    setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: lim.maximum })
        .map_err(|e| e.to_string())
}

#[test]
fn a_thousand_concurrent_native_connections_are_all_served_and_the_ledger_is_exact() {
    const N: u64 = 1000;
    if let Err(e) = raise_nofile(2 * N + 256) {
        panic!("cannot raise the descriptor limit for {N} connections: {e}");
    }
    let rig = Rig::start("thousand");
    let path = rig.path(Listener::Native);
    let mut clients: Vec<Native> = (0..N).map(|_| Native::connect_bare(&path)).collect();
    // All open at once: each says Hello, then reports, interleaved across connections.
    for c in clients.iter_mut() {
        c.raw(&frame(
            MsgType::Hello.code(),
            1,
            &proto::Hello { name: String::new(), first_seq: 0 }.encode_to_vec(),
        ));
    }
    for c in clients.iter_mut() {
        let (_, body) = c.read(|t, id| t == MsgType::Hello.code() && id == 1);
        assert_eq!(proto::HelloReply::decode(body.as_slice()).unwrap().pid, me());
    }
    rig.wait_usage("1000 connections open", |u| u.counters.unwrap().connections == N + 1);
    for round in 0..3u64 {
        for (i, c) in clients.iter_mut().enumerate() {
            let id = ((i as u64) << 8) | round;
            c.event(MsgType::Alloc, (i % 2) as i32, 1, id, 100);
            if round == 1 {
                c.event(MsgType::Free, (i % 2) as i32, 0, id, 0);
            }
        }
    }
    // Every connection is served: each gets its own reply.
    for (i, c) in clients.iter_mut().enumerate() {
        let d = c.usage((i % 2) as i32);
        assert_eq!(d.device, (i % 2) as i32);
    }
    let u = rig.wait_events(N * 4);
    for d in &u.devices {
        assert_eq!((d.l1, d.num_buffers), (N / 2 * 2 * 100, N / 2 * 2), "device {}", d.device);
    }
    let k = u.counters.unwrap();
    assert_eq!((k.events, k.unknown_frees, k.duplicate_allocs, k.gaps_skipped), (N * 4, 0, 0, 0));
    drop(clients);
    rig.wait_usage("1000 connections closed", |u| u.counters.unwrap().connections == 1);
}

// ---------------------------------------------------------------------------------------------
// Process exit and shared-memory rings.
// ---------------------------------------------------------------------------------------------

/// Registers a shared-memory ring on `n` (request id `req`): the ring and its memfd (a
/// duplicate, the test's own handle on the segment).
fn register_ring(n: &mut Native, req: u64) -> (ClientTx<RingRecord>, std::os::fd::OwnedFd) {
    assert_eq!(n.pending(), 0, "nothing read ahead of the grant");
    n.raw(&frame(MsgType::RegisterRing.code(), req, &proto::RegisterRing {}.encode_to_vec()));
    let mut buf = vec![0u8; 4096];
    let (len, fd) = recv_with_fd(n.stream.as_fd(), &mut buf).unwrap();
    let fd = fd.expect("the grant carries the ring's memfd");
    let mut decoder = Decoder::new(DecoderConfig::default());
    let mut grant = None;
    decoder
        .feed(&buf[..len], |e| {
            if let WireEvent::Frame(f) = e {
                assert_eq!(
                    (f.header.msg_type, f.header.msg_id),
                    (MsgType::RegisterRing.code(), req)
                );
                assert!(
                    f.header.flags.contains(Flags::RESPONSE)
                        && !f.header.flags.contains(Flags::ERROR)
                );
                grant = Some(proto::RingGrant::decode(f.body).unwrap());
            }
        })
        .unwrap();
    let grant = grant.expect("a whole grant frame with the descriptor");
    assert!(grant.capacity.is_power_of_two());
    let dup = fd.try_clone().unwrap();
    (ClientTx::attach(fd).unwrap(), dup)
}

/// Pushes records into a ring and rings the doorbell on `n` if the daemon asks.
fn push(n: &mut Native, tx: &mut ClientTx<RingRecord>, records: &[RingRecord]) {
    assert_eq!(tx.push_slice(records), records.len(), "room in the ring");
    if tx.take_doorbell() {
        n.raw(&frame(MsgType::Doorbell.code(), 0, &[]));
    }
}

fn ev(kind: MsgType, device: u8, btype: u8, id: u64, size: u64) -> Event {
    Event::validate(kind, device.into(), btype, id, size).unwrap()
}

/// The killed child: 3 buffers, 2 CBs and 1 kernel over its native socket and a ring, then
/// "ready" on stdout, then it waits to be killed.
fn killed_child(dir: &std::path::Path) {
    let mut n = Native::connect(&dir.join("alloc.sock"));
    n.send_event(&ev(MsgType::Alloc, 0, 0, 0x1000, 1 << 20));
    n.send_event(&ev(MsgType::Alloc, 0, 1, 0x2000, 64 << 10));
    n.send_event(&ev(MsgType::CbAlloc, 0, 0, 0x10, 32 << 10));
    let _ = n.usage(0); // applied, and nothing left to read before the grant
    let (mut tx, _segment) = register_ring(&mut n, 100);
    let seq = n.seq;
    let records = [
        RingRecord::new(seq, &ev(MsgType::Alloc, 1, 0, 0x3000, 2 << 20), 0),
        RingRecord::new(seq + 1, &ev(MsgType::CbAlloc, 1, 0, 0x11, 16 << 10), 0),
        RingRecord::new(seq + 2, &ev(MsgType::KernelLoad, 1, 0, 0x99, 8 << 10), 0),
    ];
    push(&mut n, &mut tx, &records);
    println!("ready");
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn a_client_process_killed_with_sigkill_is_released_and_nothing_of_it_is_applied_after() {
    let rig = Rig::start("sigkill");
    // This process holds something too: the baseline the totals come back to.
    let mut mine = Native::connect(&rig.path(Listener::Native));
    mine.event(MsgType::Alloc, 0, 0, 0xF000, 4096);
    let _ = mine.usage(0);
    let baseline = rig.usage();
    let mut child = spawn_child("killed", &rig);
    let child_pid = child.id();
    // The test harness of the child prints its own lines first.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child says ready, then waits").unwrap();
        if line.trim() == "ready" {
            break;
        }
    }
    // All six applied (three of them through the ring).
    rig.wait_usage("the child's 3 buffers, 2 CBs, 1 kernel", |_| {
        let dump = rig.dump();
        let e = entries_of(&dump, child_pid);
        e.iter().filter(|e| e.0 == 1).count() == 3
            && e.iter().filter(|e| e.0 == 2).count() == 2
            && e.iter().filter(|e| e.0 == 3).count() == 1
    });
    let before = rig.counters();
    assert_eq!(before.rings, 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let u = rig.wait_usage("the child's release", |u| {
        u.counters.unwrap().processes_released == before.processes_released + 1
    });
    let k = u.counters.unwrap();
    assert_eq!(k.entries_released, before.entries_released + 6);
    assert_eq!(k.after_release, before.after_release, "nothing applied after the release");
    assert_eq!(k.rings, 0);
    assert_eq!(u.devices, baseline.devices, "totals back to the baseline");
    assert!(entries_of(&rig.dump(), child_pid).is_empty());
    assert_eq!(entries_of(&rig.dump(), me()).len(), 1, "this process keeps its own");
    let line =
        rig.wait_log(&["released 3 buffers, 2 CBs, 1 kernel", &format!("of pid {child_pid}")]);
    assert!(line.contains("INFO") || line.contains("WARN"), "{line}");
}

#[test]
fn a_client_that_corrupts_its_own_ring_is_cut_off_and_a_good_client_beside_it_stays_exact() {
    let rig = Rig::start("corrupt");
    let path = rig.path(Listener::Native);
    let mut good = Native::connect(&path);
    let (mut good_tx, _) = register_ring(&mut good, 100);
    let mut bad = Native::connect(&path);
    let (mut bad_tx, segment) = register_ring(&mut bad, 100);
    // Both report through their rings; the bad one on device 1, the good one on device 0.
    push(
        &mut bad,
        &mut bad_tx,
        &[
            RingRecord::new(0, &ev(MsgType::Alloc, 1, 0, 0x1, 1000), 0),
            RingRecord::new(1, &ev(MsgType::Alloc, 1, 0, 0x2, 1000), 0),
        ],
    );
    let mut seq = 0;
    for i in 0..10 {
        good_report(&mut good, &mut good_tx, &mut seq, 0x100 + i * 2);
    }
    rig.wait_events(2 + 30);
    // An impossible tail, written through the client's own handle on the segment.
    let tail = (1u64 << 40).to_le_bytes();
    let at = corelane::rings::spsc::shm::TAIL_OFFSET as u64;
    assert_eq!(rustix::io::pwrite(&segment, &tail, at).unwrap(), 8);
    bad.raw(&frame(MsgType::Doorbell.code(), 0, &[]));
    let (closed, _) = closed_within(&mut bad.stream, DEADLINE);
    assert!(closed, "the corrupt client's connection is closed");
    for i in 10..20 {
        good_report(&mut good, &mut good_tx, &mut seq, 0x100 + i * 2);
    }
    // And its socket, in the same sequence as its ring.
    good.seq = seq;
    good.event(MsgType::Alloc, 0, 0, 0xAAAA, 4096);
    let u = rig.wait_events(2 + 60 + 1);
    let d = &u.devices[0];
    assert_eq!((d.l1, d.num_buffers, d.dram), (20 * 10, 21, 4096), "the good client's ledger");
    assert_eq!(u.devices[1].dram, 2000, "what the bad client reported before is kept");
    let k = u.counters.unwrap();
    assert_eq!((k.ring_corruptions, k.rings, k.gaps_skipped, k.unknown_frees), (1, 1, 0, 0));
    assert_eq!(k.events, 2 + 60 + 1);
    rig.wait_log(&["is corrupt", &format!("pid {}", me())]);
}

/// Two ALLOCs and a FREE of the first through the good client's ring.
fn good_report(good: &mut Native, tx: &mut ClientTx<RingRecord>, seq: &mut u64, id: u64) {
    let s = *seq;
    push(
        good,
        tx,
        &[
            RingRecord::new(s, &ev(MsgType::Alloc, 0, 1, id, 10), 0),
            RingRecord::new(s + 1, &ev(MsgType::Alloc, 0, 1, id + 1, 10), 0),
            RingRecord::new(s + 2, &ev(MsgType::Free, 0, 0, id, 0), 0),
        ],
    );
    *seq += 3;
}

// ---------------------------------------------------------------------------------------------
// Native queries.
// ---------------------------------------------------------------------------------------------

#[test]
fn usage_reports_capacities_of_two_n300_chips() {
    let rig = Rig::start("q-usage");
    let u = rig.usage();
    assert_eq!(u.devices.len(), 2);
    for (i, d) in u.devices.iter().enumerate() {
        assert_eq!(d.device, i as i32);
        assert_eq!((d.arch.as_str(), d.board.as_str()), ("Wormhole_B0", "n300"));
        assert_eq!((d.dram_capacity, d.l1_capacity), (N300_DRAM, N300_L1));
    }
    let one = rig.query().usage(Some(1)).unwrap();
    assert_eq!(one.devices.len(), 1);
    assert_eq!(one.devices[0].device, 1);
}

#[test]
fn device_info_minus_1_lists_two_devices() {
    let rig = Rig::start("q-devinfo");
    let r = rig.query().device_info(-1).unwrap();
    assert_eq!(r.num_devices, 2);
    assert_eq!(r.devices.len(), 2);
    assert!(r.devices.iter().all(|d| d.available && d.arch_type == 2));
}

#[test]
fn per_process_usage_names_the_reporting_pid_per_device() {
    let rig = Rig::start("q-procs");
    let mut n = Native::connect(&rig.path(Listener::Native));
    n.event(MsgType::Alloc, 0, 0, 0x1, 4096);
    n.event(MsgType::Alloc, 1, 1, 0x1, 2048);
    n.event(MsgType::CbAlloc, 1, 0, 0x2, 512);
    n.event(MsgType::KernelLoad, 1, 2, 0x3, 256);
    let _ = n.usage(0);
    let procs = rig.query().processes().unwrap();
    let mut p = procs.processes.clone();
    p.sort_by_key(|p| p.device);
    assert_eq!(p.len(), 2, "{procs:?}");
    assert!(p.iter().all(|p| p.pid == me()));
    // The uid too comes from the socket's credentials.
    let uid = rustix::process::geteuid().as_raw();
    assert!(p.iter().all(|p| p.uid == Some(uid)), "{p:?}");
    assert_eq!((p[0].device, p[0].dram, p[0].buffers), (0, 4096, 1));
    assert_eq!((p[1].device, p[1].l1, p[1].cb, p[1].kernel), (1, 2048, 512, 256));
    assert_eq!((p[1].buffers, p[1].cbs, p[1].kernels), (1, 1, 1));
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(p[0].name, comm.trim_end());
}

#[test]
fn dump_lists_every_live_entry_with_owner_and_ref_count() {
    let rig = Rig::start("q-dump");
    let mut n = Native::connect(&rig.path(Listener::Native));
    n.event(MsgType::Alloc, 0, 4, 0x10, 100);
    n.event(MsgType::Alloc, 0, 4, 0x10, 100);
    n.event(MsgType::CbAlloc, 1, 0, 0x20, 200);
    n.event(MsgType::KernelLoad, 1, 1, 0x30, 300);
    n.event(MsgType::Alloc, 1, 0, 0x40, 400);
    n.event(MsgType::Free, 1, 0, 0x40, 0);
    let _ = n.usage(0);
    let dump = rig.dump();
    let mut a = dump.allocations.clone();
    a.sort_by_key(|a| (a.kind, a.device, a.buffer_id));
    let want = [
        proto::Allocation {
            kind: 1,
            device: 0,
            buffer_id: 0x10,
            size: 100,
            buffer_type: 4,
            pid: me(),
            ref_count: 2,
        },
        proto::Allocation {
            kind: 2,
            device: 1,
            buffer_id: 0x20,
            size: 200,
            buffer_type: 0,
            pid: me(),
            ref_count: 1,
        },
        proto::Allocation {
            kind: 3,
            device: 1,
            buffer_id: 0x30,
            size: 300,
            buffer_type: 1,
            pid: me(),
            ref_count: 1,
        },
    ];
    assert_eq!(a, want);
    assert_eq!(dump.omitted, 0);
    let kernels: proto::DumpReply = n.request(MsgType::DumpKernels, &proto::DumpRequest {});
    assert_eq!(kernels.allocations, want[2..]);
}

#[test]
fn a_subscriber_gets_a_usage_push_after_a_change() {
    let rig = Rig::start("q-subscribe");
    let mut sub = rig.query();
    let first = sub.subscribe(10).unwrap();
    assert_eq!(first.devices.len(), 2);
    let mut n = Native::connect(&rig.path(Listener::Native));
    n.event(MsgType::Alloc, 1, 0, 0x1, 12345);
    let _ = n.usage(1);
    // Pushes come at most every 10 ms and only after a change; the one after ours shows it.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let push = sub.next_push().unwrap();
        let usage = push.usage.expect("a push carries the usage");
        assert!(usage.version > first.version);
        if usage.devices[1].dram == 12345 {
            break;
        }
        assert!(Instant::now() < deadline, "no push showing the change");
    }
}
