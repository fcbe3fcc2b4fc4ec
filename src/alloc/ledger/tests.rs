use super::*;
use proptest::prelude::*;

const P: u32 = 4242;

fn ev(kind: MsgType, device: u8, buffer_type: u8, buffer_id: u64, size: u64) -> Event {
    Event { kind, device, buffer_type, buffer_id, size }
}
fn alloc(device: u8, ty: BufferType, id: u64, size: u64) -> Event {
    ev(MsgType::Alloc, device, ty as u8, id, size)
}
fn free(device: u8, id: u64) -> Event {
    ev(MsgType::Free, device, 0, id, 0)
}
fn cb_alloc(device: u8, id: u64, size: u64) -> Event {
    ev(MsgType::CbAlloc, device, 0, id, size)
}
fn cb_free(device: u8, id: u64, size: u64) -> Event {
    ev(MsgType::CbFree, device, 0, id, size)
}
fn kload(device: u8, kind: KernelKind, id: u64, size: u64) -> Event {
    ev(MsgType::KernelLoad, device, kind as u8, id, size)
}
fn kunload(device: u8, id: u64, size: u64) -> Event {
    ev(MsgType::KernelUnload, device, 0, id, size)
}
fn ledger() -> Ledger {
    Ledger::new(DeviceTable::default_table())
}

#[test]
fn alloc_then_query_counts_dram_only() {
    // S2
    let mut l = ledger();
    assert_eq!(l.apply(P, &alloc(0, BufferType::Dram, 0x1000, 4096)), Outcome::Added);
    let u = l.usage(0);
    assert_eq!(u.totals.bytes(BufferType::Dram), 4096);
    assert_eq!(u.totals.buffers, 1);
    let mut zeroed = u.totals;
    zeroed.buffer_bytes[0] = 0;
    zeroed.buffers = 0;
    assert!(zeroed.is_zero(), "every other counter is 0: {zeroed:?}");
    assert!(l.usage(1).totals.is_zero());
    l.debug_check();
}

#[test]
fn all_five_types_are_kept_apart() {
    // S3, with SYSTEM_MEMORY not folded into L1_SMALL.
    let mut l = ledger();
    for (i, t) in BufferType::ALL.iter().enumerate() {
        l.apply(P, &alloc(0, *t, 0x100 * (i as u64 + 1), 1 << i));
    }
    let u = l.usage(0).totals;
    for (i, t) in BufferType::ALL.iter().enumerate() {
        assert_eq!(u.bytes(*t), 1 << i, "{}", t.name());
    }
    assert_eq!(u.buffer_total(), 31);
    assert_eq!(u.buffers, 5);
    assert_eq!(u.total(), 31);
}

#[test]
fn duplicate_alloc_bumps_ref_count_and_frees_use_the_stored_size() {
    // S7, S8, S9
    let mut l = ledger();
    assert_eq!(l.apply(P, &alloc(0, BufferType::L1, 0xA0, 1000)), Outcome::Added);
    // A duplicate with another size and type changes neither.
    assert_eq!(l.apply(P, &alloc(0, BufferType::Dram, 0xA0, 5000)), Outcome::RefBumped);
    assert_eq!(l.usage(0).totals.bytes(BufferType::L1), 1000);
    assert_eq!(l.usage(0).totals.bytes(BufferType::Dram), 0);
    assert_eq!(l.usage(0).totals.buffers, 1);
    let e: Vec<_> = l.remaining().collect();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].ref_count, 2);
    assert_eq!(e[0].size, 1000);
    assert_eq!(e[0].kind, EntryKind::Buffer(BufferType::L1));

    // A FREE whose size and type fields hold garbage.
    let garbage = ev(MsgType::Free, 0, 219, 0xA0, u64::MAX);
    assert_eq!(l.apply(P, &garbage), Outcome::Decremented);
    assert_eq!(l.usage(0).totals.bytes(BufferType::L1), 1000);
    assert_eq!(l.apply(P, &garbage), Outcome::Removed);
    assert!(l.usage(0).totals.is_zero());
    assert_eq!(l.apply(P, &garbage), Outcome::UnknownFree);
    assert!(l.usage(0).totals.is_zero());
    assert!(l.is_empty());
    let s = l.stats();
    assert_eq!(s.buffers.allocs, 2);
    assert_eq!(s.buffers.duplicate_allocs, 1);
    assert_eq!(s.buffers.frees, 3);
    assert_eq!(s.buffers.unknown_frees, 1);
    assert_eq!(s.applied(), 5);
    l.debug_check();
}

#[test]
fn unknown_frees_never_underflow() {
    // S10, S17, S18: unknown keys of every class change nothing.
    let mut l = ledger();
    l.apply(P, &alloc(0, BufferType::Dram, 1, 10));
    let before = l.usage(0);
    let v = l.version();
    assert_eq!(l.apply(P, &free(0, 2)), Outcome::UnknownFree);
    assert_eq!(l.apply(P, &cb_free(0, 1, 1 << 40)), Outcome::UnknownFree);
    assert_eq!(l.apply(P, &kunload(0, 1, 1 << 40)), Outcome::UnknownFree);
    assert_eq!(l.usage(0), before);
    assert_eq!(l.version(), v, "nothing changed");
    let s = l.stats();
    assert_eq!((s.buffers.unknown_frees, s.cbs.unknown_frees, s.kernels.unknown_frees), (1, 1, 1));
}

#[test]
fn devices_and_classes_are_separate_key_spaces() {
    // S11
    let mut l = ledger();
    l.apply(P, &alloc(0, BufferType::Dram, 0x5000, 100));
    l.apply(P, &alloc(1, BufferType::Dram, 0x5000, 200));
    l.apply(P, &cb_alloc(0, 0x5000, 300));
    l.apply(P, &kload(0, KernelKind::Application, 0x5000, 400));
    assert_eq!(l.len(), 4);
    assert_eq!(l.apply(P, &free(1, 0x5000)), Outcome::Removed);
    let u0 = l.usage(0).totals;
    assert_eq!(u0.bytes(BufferType::Dram), 100);
    assert_eq!(u0.cb_bytes, 300);
    assert_eq!(u0.kernel_bytes, 400);
    assert!(l.usage(1).totals.is_zero());
    assert_eq!(l.apply(P, &free(0, 0x5000)), Outcome::Removed);
    assert_eq!(l.usage(0).totals.cb_bytes, 300, "the CB of the same id stays");
    l.debug_check();
}

#[test]
fn cbs_use_the_stored_size_and_count_duplicates_once() {
    // S17, and the fixes of §2.5 (CB_FREE of an unknown key, duplicate CB_ALLOC).
    let mut l = ledger();
    assert_eq!(l.apply(P, &cb_alloc(0, 7, 4096)), Outcome::Added);
    assert_eq!(l.usage(0).totals.cb_bytes, 4096);
    assert_eq!(l.apply(P, &cb_alloc(0, 7, 8192)), Outcome::RefBumped);
    assert_eq!(l.usage(0).totals.cb_bytes, 4096, "no double count");
    assert_eq!(l.usage(0).totals.cbs, 1);
    assert_eq!(l.apply(P, &cb_free(0, 7, 1)), Outcome::Decremented);
    assert_eq!(l.apply(P, &cb_free(0, 7, 1)), Outcome::Removed);
    assert_eq!(l.usage(0).totals.cb_bytes, 0, "stored size, not the message's 1");
    assert_eq!(l.stats().cbs.duplicate_allocs, 1);
}

#[test]
fn kernels_keep_their_kind_counters() {
    // S18
    let mut l = ledger();
    assert_eq!(l.apply(P, &kload(1, KernelKind::Fabric, 9, 56_000)), Outcome::Added);
    l.apply(P, &kload(1, KernelKind::Dispatch, 10, 46_000));
    let u = l.usage(1).totals;
    assert_eq!(u.kernel_bytes, 102_000);
    assert_eq!(u.kernel_kind(KernelKind::Fabric), 56_000);
    assert_eq!(u.kernel_kind(KernelKind::Dispatch), 46_000);
    assert_eq!(u.kernel_kind(KernelKind::Application), 0);
    assert_eq!(u.kernels, 2);
    assert_eq!(l.apply(P, &kunload(1, 9, 3)), Outcome::Removed);
    let u = l.usage(1).totals;
    assert_eq!(u.kernel_bytes, 46_000, "stored size, not the message's 3");
    assert_eq!(u.kernel_kind(KernelKind::Fabric), 0);
    assert_eq!(l.apply(P, &kunload(1, 9, 3)), Outcome::UnknownFree);
    assert_eq!(l.apply(P, &kload(1, KernelKind::Dispatch, 10, 1)), Outcome::RefBumped);
    assert_eq!(l.usage(1).totals.kernel_bytes, 46_000);
}

#[test]
fn invalid_events_are_rejected() {
    let mut l = ledger();
    for e in [
        alloc(8, BufferType::Dram, 1, 1),
        ev(MsgType::Alloc, 0, 5, 1, 1),
        ev(MsgType::KernelLoad, 0, 3, 1, 1),
        ev(MsgType::Query, 0, 0, 1, 1),
        ev(MsgType::Free, 200, 0, 1, 1),
    ] {
        assert_eq!(l.apply(P, &e), Outcome::Rejected, "{e:?}");
    }
    assert_eq!(l.stats().rejected, 5);
    assert_eq!(l.stats().applied(), 0);
    assert!(l.is_empty());
    assert_eq!(l.version(), 0);
}

#[test]
fn release_removes_everything_a_pid_owns_in_one_step() {
    // S19, S21
    let mut l = ledger();
    l.apply(7, &alloc(0, BufferType::Dram, 0x10, 1 << 20));
    l.apply(P, &alloc(0, BufferType::Dram, 0x1000, 4 << 20));
    l.apply(P, &alloc(0, BufferType::Dram, 0x1000, 4 << 20)); // ref_count 2
    l.apply(P, &alloc(1, BufferType::L1, 0x2000, 4 << 20));
    l.apply(P, &alloc(0, BufferType::Trace, 0x3000, 4 << 20));
    l.apply(P, &cb_alloc(0, 1, 256 << 10));
    l.apply(P, &cb_alloc(1, 1, 256 << 10));
    l.apply(P, &kload(0, KernelKind::Dispatch, 5, 12 << 10));
    assert_eq!(l.len(), 7);
    let mut pids: Vec<u32> = l.pids().collect();
    pids.sort_unstable();
    assert_eq!(pids, [7, P]);
    let v = l.version();

    let r = l.release_process(P);
    assert_eq!((r.buffers, r.cbs, r.kernels), (3, 2, 1));
    assert_eq!(r.buffer_bytes, 12 << 20);
    assert_eq!(r.cb_bytes, 512 << 10);
    assert_eq!(r.kernel_bytes, 12 << 10);
    assert_eq!(r.bytes, (12 << 20) + (512 << 10) + (12 << 10));
    assert_eq!(r.entries(), 6);
    assert!(l.version() > v);
    assert_eq!(l.len(), 1);
    assert_eq!(l.usage(0).totals.bytes(BufferType::Dram), 1 << 20, "pid 7's stays");
    assert!(l.usage(1).totals.is_zero());
    assert_eq!(l.pids().collect::<Vec<_>>(), [7]);
    assert_eq!(l.stats().releases, 1);
    assert_eq!(l.stats().released_entries, 6);
    assert_eq!(format_release(P, &r), "released 3 buffers, 2 CBs, 1 kernel (12.5 MiB) of pid 4242");

    // A second release, or one of a pid never seen, is empty and changes nothing.
    let v = l.version();
    assert!(l.release_process(P).is_empty());
    assert!(l.release_process(99).is_empty());
    assert_eq!(l.version(), v);
    assert_eq!(l.stats().releases, 1);
    l.debug_check();
}

#[test]
fn a_free_from_another_pid_applies_to_the_owner() {
    let mut l = ledger();
    l.apply(1, &alloc(0, BufferType::Dram, 0x40, 64));
    l.apply(2, &alloc(0, BufferType::Dram, 0x40, 64)); // duplicate: owner stays 1
    assert_eq!(l.remaining().next().unwrap().pid, 1);
    assert_eq!(l.apply(2, &free(0, 0x40)), Outcome::Decremented);
    assert_eq!(l.apply(2, &free(0, 0x40)), Outcome::Removed);
    assert!(l.process_usage().is_empty());
    assert!(l.release_process(1).is_empty());
    assert!(l.release_process(2).is_empty());
}

#[test]
fn process_usage_is_per_pid_and_device() {
    let mut l = ledger();
    l.apply(20, &alloc(1, BufferType::Dram, 1, 100));
    l.apply(10, &alloc(0, BufferType::L1, 1, 5));
    l.apply(10, &cb_alloc(0, 1, 7));
    l.apply(10, &kload(3, KernelKind::Application, 1, 9));
    l.apply(20, &alloc(1, BufferType::Dram, 2, 50));
    let u = l.process_usage();
    let rows: Vec<(u32, u8, u64)> = u.iter().map(|u| (u.pid, u.device, u.totals.total())).collect();
    assert_eq!(rows, [(10, 0, 12), (10, 3, 9), (20, 1, 150)]);
    assert_eq!(u[0].totals.bytes(BufferType::L1), 5);
    assert_eq!(u[0].totals.cb_bytes, 7);
    assert_eq!(u[2].totals.buffers, 2);
    l.apply(10, &kunload(3, 1, 0));
    assert_eq!(l.process_usage().len(), 2);
}

#[test]
fn usage_has_capacities_and_untabled_devices_are_tracked() {
    let mut l = ledger();
    let n300 = crate::alloc::devices::DeviceSpec::preset("n300").unwrap();
    let u = l.usage(1);
    assert_eq!(u.device, 1);
    assert_eq!(u.dram_capacity, n300.dram_capacity());
    assert_eq!(u.l1_capacity, n300.l1_capacity());
    // Device 5 is not in the table: tracked, capacity 0.
    assert_eq!(l.apply(P, &alloc(5, BufferType::Dram, 1, 10)), Outcome::Added);
    let u = l.usage(5);
    assert_eq!(u.totals.bytes(BufferType::Dram), 10);
    assert_eq!((u.dram_capacity, u.l1_capacity), (0, 0));
    // S12: a device outside 0..8 is all zero.
    let u = l.usage(9);
    assert_eq!(u.device, 9);
    assert!(u.totals.is_zero());
    assert_eq!(u.dram_capacity, 0);
    assert_eq!(l.table().len(), 2);
}

#[test]
fn version_moves_only_when_a_total_changes() {
    let mut l = ledger();
    let mut v = l.version();
    let mut step = |l: &mut Ledger, e: Event, changes: bool| {
        l.apply(P, &e);
        assert_eq!(l.version() > v, changes, "{e:?}");
        v = l.version();
    };
    step(&mut l, alloc(0, BufferType::Dram, 1, 1), true);
    step(&mut l, alloc(0, BufferType::Dram, 1, 1), false);
    step(&mut l, free(0, 1), false);
    step(&mut l, free(0, 1), true);
    step(&mut l, free(0, 1), false);
    step(&mut l, cb_alloc(0, 1, 1), true);
    step(&mut l, kload(0, KernelKind::Fabric, 1, 1), true);
}

#[test]
fn dump_report_empty() {
    // S16
    let l = ledger();
    let r = l.dump_report();
    assert!(r.contains("Total tracked allocations: 0"), "{r}");
    assert!(r.contains("No buffers remaining - perfect cleanup!"), "{r}");
    assert!(r.is_ascii());
}

#[test]
fn dump_report_groups_and_lists_at_most_ten() {
    let mut l = ledger();
    for i in 0..11u64 {
        l.apply(P, &alloc(0, BufferType::Dram, 0x1000 * (i + 1), 1 << 20));
    }
    l.apply(P, &alloc(0, BufferType::L1, 0xBEEF, 2048));
    l.apply(P, &alloc(0, BufferType::L1, 0xBEEF, 2048));
    l.apply(7, &alloc(1, BufferType::Trace, 0x10, 4096));
    l.apply(P, &cb_alloc(0, 1, 1)); // not a buffer: not in the dump
    let r = l.dump_report();
    assert!(r.is_ascii());
    assert!(r.contains("Total tracked allocations: 13"), "{r}");
    assert!(r.contains("Device 0:\n  DRAM: 11 buffers, 11.00 MB total\n  L1: 1 buffers"), "{r}");
    assert!(!r.contains("Buffer 0x1000:"), "11 DRAM buffers are not listed: {r}");
    assert!(r.contains("    - Buffer 0xbeef: 2.0 KB (PID 4242, ref_count=2)"), "{r}");
    assert!(r.contains("Device 1:\n  TRACE: 1 buffers, 0.00 MB total\n"), "{r}");
    assert!(r.contains("    - Buffer 0x10: 4.0 KB (PID 7, ref_count=1)"), "{r}");
    assert!(r.trim_end().ends_with("Total remaining buffers: 13"), "{r}");
    assert!(!r.contains("perfect cleanup"));
}

#[test]
fn format_helpers() {
    assert_eq!(format_bytes(0), "0 B");
    assert_eq!(format_bytes(1023), "1023 B");
    assert_eq!(format_bytes(4096), "4.0 KiB");
    assert_eq!(format_bytes(34_225_520_640), "31.9 GiB");
    assert_eq!(format_bytes(u64::MAX), "16777216.0 TiB");
    let one = Released { buffers: 1, cbs: 1, kernels: 0, bytes: 100, ..Released::default() };
    assert_eq!(format_release(1, &one), "released 1 buffer, 1 CB, 0 kernels (100 B) of pid 1");
}

#[test]
fn slots_are_reused_after_release() {
    let mut l = ledger();
    for round in 0..50u32 {
        let pid = 1000 + round;
        for i in 0..20 {
            l.apply(pid, &alloc((i % 8) as u8, BufferType::Dram, i, 8));
        }
        l.apply(pid, &free(3, 3));
        let r = l.release_process(pid);
        assert_eq!(r.buffers, 19);
        assert!(l.is_empty());
    }
    assert_eq!(l.procs.slots.len(), 1, "one slot served every pid");
    assert!(l.procs.index.is_empty());
    assert!(l.usage(0).totals.is_zero());
}

#[test]
fn hasher_spreads_small_and_aligned_keys() {
    use std::collections::HashSet;
    let mut low = HashSet::new();
    for class in [Class::Buffer, Class::Cb, Class::Kernel] {
        for d in 0..8u8 {
            for i in 0..64u64 {
                let k = Key::new(class, d, i << 12);
                low.insert(FastState.hash_one(k) & 0xFFF);
            }
        }
    }
    // 1536 keys into 4096 buckets: a decent hash fills most of what it can.
    assert!(low.len() > 1100, "{} distinct low-12-bit hashes", low.len());
    assert_eq!(Key::new(Class::Kernel, 7, 0).class(), Class::Kernel);
    assert_eq!(Key::new(Class::Cb, 7, 0).device, 7);
}

#[test]
fn steady_state_reuses_capacity() {
    let mut l = ledger();
    for i in 0..1000u64 {
        l.apply(P, &alloc(0, BufferType::Dram, i, 1));
    }
    for i in 0..1000u64 {
        l.apply(P, &free(0, i));
    }
    let cap = l.entries.capacity();
    let keys = l.procs.slots[0].keys.capacity();
    for round in 0..10u64 {
        for i in 0..1000u64 {
            l.apply(P, &alloc(0, BufferType::Dram, round * 1000 + i, 1));
        }
        for i in 0..1000u64 {
            l.apply(P, &free(0, round * 1000 + i));
        }
    }
    // Tombstones make `capacity` dip between in-place rehashes; it never grows past the
    // working set's (the table never reallocates).
    assert!(l.entries.capacity() <= cap, "{} > {cap}", l.entries.capacity());
    assert_eq!(l.procs.slots[0].keys.capacity(), keys);
}

// --- property test against a naive model ---

fn class_of(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Buffer(_) => 0,
        EntryKind::Cb => 1,
        EntryKind::Kernel(_) => 2,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Event { pid: u32, event: Event },
    Release(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let kinds = prop::sample::select(vec![
        MsgType::Alloc,
        MsgType::Free,
        MsgType::CbAlloc,
        MsgType::CbFree,
        MsgType::KernelLoad,
        MsgType::KernelUnload,
    ]);
    let event = (1u32..4, kinds, 0u8..3, 0u8..6, 0u64..5, 1u64..10_000).prop_map(
        |(pid, kind, device, ty, id, size)| Op::Event {
            pid,
            // Types 5 (buffer) and 3..5 (kernel) are out of range: rejected.
            event: ev(kind, device, ty, id, size),
        },
    );
    prop_oneof![10 => event, 1 => (1u32..4).prop_map(Op::Release)]
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct ModelEntry {
    class: u8,
    device: u8,
    id: u64,
    kind: EntryKind,
    size: u64,
    pid: u32,
    refs: u32,
}

fn model_totals(model: &[ModelEntry], pid: Option<u32>, device: u8) -> Totals {
    let mut t = Totals::default();
    for e in model.iter().filter(|e| e.device == device && pid.is_none_or(|p| p == e.pid)) {
        t.add(e.kind, e.size);
    }
    t
}

fn model_apply(model: &mut Vec<ModelEntry>, pid: u32, e: &Event) -> Outcome {
    let class = match e.kind {
        MsgType::Alloc | MsgType::Free => 0,
        MsgType::CbAlloc | MsgType::CbFree => 1,
        _ => 2,
    };
    let kind = match e.kind {
        MsgType::Alloc => match BufferType::from_code(e.buffer_type) {
            Some(t) => Some(EntryKind::Buffer(t)),
            None => return Outcome::Rejected,
        },
        MsgType::CbAlloc => Some(EntryKind::Cb),
        MsgType::KernelLoad => match KernelKind::from_code(e.buffer_type) {
            Some(k) => Some(EntryKind::Kernel(k)),
            None => return Outcome::Rejected,
        },
        _ => None,
    };
    let pos =
        model.iter().position(|m| m.class == class && m.device == e.device && m.id == e.buffer_id);
    match (kind, pos) {
        (Some(_), Some(i)) => {
            model[i].refs += 1;
            Outcome::RefBumped
        }
        (Some(kind), None) => {
            model.push(ModelEntry {
                class,
                device: e.device,
                id: e.buffer_id,
                kind,
                size: e.size,
                pid,
                refs: 1,
            });
            Outcome::Added
        }
        (None, None) => Outcome::UnknownFree,
        (None, Some(i)) if model[i].refs > 1 => {
            model[i].refs -= 1;
            Outcome::Decremented
        }
        (None, Some(i)) => {
            model.remove(i);
            Outcome::Removed
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every total, per device and per (pid, device), every live entry and every outcome equal
    /// a Vec of entries' with totals recomputed from scratch.
    #[test]
    fn the_ledger_matches_a_naive_model(ops in prop::collection::vec(op(), 1..300)) {
        let mut l = ledger();
        let mut model: Vec<ModelEntry> = Vec::new();
        for op in &ops {
            match op {
                Op::Event { pid, event } => {
                    let want = model_apply(&mut model, *pid, event);
                    prop_assert_eq!(l.apply(*pid, event), want, "{:?}", op);
                }
                Op::Release(pid) => {
                    let gone: Vec<ModelEntry> =
                        model.iter().filter(|m| m.pid == *pid).copied().collect();
                    model.retain(|m| m.pid != *pid);
                    let r = l.release_process(*pid);
                    prop_assert_eq!(r.entries(), gone.len() as u64);
                    prop_assert_eq!(r.bytes, gone.iter().map(|m| m.size).sum::<u64>());
                }
            }
            for d in 0..MAX_DEVICES as u8 {
                prop_assert_eq!(l.usage(d).totals, model_totals(&model, None, d), "device {}", d);
            }
            let mut want_pu = Vec::new();
            for pid in 1..4 {
                for d in 0..MAX_DEVICES as u8 {
                    let t = model_totals(&model, Some(pid), d);
                    if !t.is_zero() {
                        want_pu.push(ProcessUsage { pid, device: d, totals: t });
                    }
                }
            }
            prop_assert_eq!(l.process_usage(), want_pu);
            let mut live: Vec<(u8, u8, u64, u64, u32, u32)> = l
                .remaining()
                .map(|e| (class_of(e.kind), e.device, e.buffer_id, e.size, e.pid, e.ref_count))
                .collect();
            live.sort_unstable();
            let mut want: Vec<_> =
                model.iter().map(|m| (m.class, m.device, m.id, m.size, m.pid, m.refs)).collect();
            want.sort_unstable();
            prop_assert_eq!(live, want);
            let mut pids: Vec<u32> = l.pids().collect();
            pids.sort_unstable();
            let mut want_pids: Vec<u32> = model.iter().map(|m| m.pid).collect();
            want_pids.sort_unstable();
            want_pids.dedup();
            prop_assert_eq!(pids, want_pids);
            l.debug_check();
        }
    }
}
