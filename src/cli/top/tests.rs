//! `corelane top` rendered against a fixed [`Source`] with ratatui's `TestBackend`.

use std::time::Duration;

use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::style::Color;
use ratatui::Terminal;

use super::render::{self, View};
use super::snapshot::*;
use super::{once_output, once_text};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn fake() -> Snapshot {
    Snapshot {
        daemon: Daemon::Running {
            pid: 4242,
            version: "9.9.9".into(),
            uptime_ms: 3_723_000,
            reactor: "io_uring".into(),
        },
        devices: Section::Ok(vec![
            Device {
                device: 0,
                arch: "Wormhole_B0".into(),
                board: "n300".into(),
                dram: 6 * GIB,
                dram_capacity: 12 * GIB,
                l1: 10 * MIB,
                cb: 2 * MIB,
                l1_capacity: 100 * MIB,
                kernel: 204 * 1024,
                ..Default::default()
            },
            Device { device: 1, dram: 34_225_520_640, ..Default::default() },
        ]),
        processes: vec![Process {
            pid: 777,
            name: "a_very_long_process_name".into(),
            device: 0,
            dram: 2560,
            l1: MIB,
            ..Default::default()
        }],
        streams: Section::Ok(Streams {
            streams: vec![Stream {
                stream_id: 7,
                profile: "camera".into(),
                epoch: 3,
                producer: Some(11),
                consumers: 2,
                frames: 1000,
                frames_per_s: Some(30.0),
                drops: 4,
                handoff_p99_ns: None,
            }],
            leases: 3,
            registered_consumers: 2,
        }),
        lanes: Section::Ok(Lanes {
            reactor: "io_uring".into(),
            from: "counters file".into(),
            lanes: vec![Lane {
                name: "main".into(),
                core: Some(2),
                idle: "backoff".into(),
                agents: vec!["control".into(), "metrics".into()],
                work_per_s: Some(123.0),
                passes_per_s: Some(2000.0),
                idle_pct: Some(99.5),
                p99_pass_ns: 1500,
            }],
        }),
        frames: Section::Ok(Frames {
            sessions: 2,
            sessions_total: 5,
            window: 4,
            in_flight: 3,
            frames_per_s: Some(60.0),
            results_per_s: Some(59.5),
            decode_p99_ns: 850,
            infer_p99_ns: 4_500_000,
            sessions_unlisted: 0,
            session_list: vec![Session {
                id: 3,
                window: 4,
                in_flight: 2,
                frames: 900,
                frames_per_s: Some(29.5),
                results: 898,
                errors: 5,
            }],
            errors: vec![("BAD_MESSAGE".into(), 5), ("BAD_SEQUENCE".into(), 0)],
            closes: vec![("end".into(), 1), ("peer_timeout".into(), 0)],
        }),
        counters_file: "live".into(),
    }
}

/// `view` drawn through a ratatui `Terminal` on a `TestBackend` of `width` x `height`.
fn draw(view: View, snap: &Snapshot, history: &History, width: u16, height: u16) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test backend");
    terminal
        .draw(|f| {
            let area = f.area();
            render::view(view, snap, history, area, f.buffer_mut());
        })
        .expect("draw");
    terminal.backend().buffer().clone()
}

fn lines(buf: &Buffer) -> Vec<String> {
    render::buffer_lines(buf)
}

/// A line with its runs of blanks and box edges folded, for column-independent asserts.
fn words(line: &str) -> String {
    line.trim_matches(|c| c == '│' || c == ' ').split_whitespace().collect::<Vec<_>>().join(" ")
}

fn has(lines: &[String], want: &str) -> bool {
    lines.iter().any(|l| words(l) == want)
}

#[test]
fn devices_view_has_a_block_per_device_and_the_process_table() {
    let buf = draw(View::Devices, &fake(), &History::default(), 100, 30);
    let l = lines(&buf);
    assert!(l[0].starts_with("┌ Device 0 (Wormhole_B0 n300) ─"), "{l:#?}");
    // 50 % of 25 cells: 12 filled.
    assert_eq!(
        l[1].trim_end_matches(['│', ' ']),
        format!("│DRAM     {}{}  50.0%  6.0GB / 12.0GB", "█".repeat(12), "░".repeat(13))
    );
    // L1 counts L1 buffers plus CBs: 12 MiB of 100 MiB.
    assert!(has(&l, &format!("L1 {}{} 12.0% 12.0MB / 100.0MB", "█".repeat(3), "░".repeat(22))));
    assert!(has(&l, "SYSTEM 0B (host memory)"), "{l:#?}");
    assert!(has(&l, &format!("KERNEL {} 0.2% 204.0KB / 100.0MB", "░".repeat(25))));
    assert!(l[9].starts_with("┌ Device 1 (not in the device table) ─"), "{l:#?}");
    assert!(has(&l, &format!("DRAM {} 0.0% 31.9GB / no capacity", "░".repeat(25))), "{l:#?}");
    assert!(l[18].starts_with("┌ Processes ─"), "{l:#?}");
    assert_eq!(words(&l[19]), "PID NAME DEV DRAM L1 L1_SMALL TRACE SYSTEM CB KERNEL");
    assert_eq!(words(&l[20]), "777 a_very_long_pro... 0 2.5KB 1.0MB 0B 0B 0B 0B 0B");
}

#[test]
fn bars_turn_yellow_at_75_and_red_at_90_percent() {
    for (percent, color, filled) in [
        (74, Color::Green, 18),
        (75, Color::Yellow, 18),
        (89, Color::Yellow, 22),
        (90, Color::Red, 22),
    ] {
        let d = Device { device: 0, dram: percent, dram_capacity: 100, ..Default::default() };
        let snap = Snapshot { devices: Section::Ok(vec![d]), ..fake() };
        let buf = draw(View::Devices, &snap, &History::default(), 80, 12);
        // Row 1 is DRAM; the bar starts after the border and the 9-column label.
        let bar: Vec<_> = (10..10 + render::BAR_CELLS as u16)
            .map(|x| buf.cell((x, 1)).expect("in the buffer").clone())
            .collect();
        let full: Vec<_> = bar.iter().filter(|c| c.symbol() == "█").collect();
        assert_eq!(full.len(), filled, "{percent}%: floor(pct x 25 / 100) cells");
        assert!(full.iter().all(|c| c.fg == color), "{percent}% should be {color:?}");
        assert_eq!(render::level_color(percent as f64), color);
    }
}

#[test]
fn byte_and_duration_formatting() {
    use crate::cli::alloc::bytes;
    assert_eq!(bytes(34_225_520_640), "31.9GB");
    assert_eq!(bytes(1023), "1023B");
    assert_eq!(bytes(1024), "1.0KB");
    assert_eq!(bytes(5 << 40), "5.0TB");
    assert_eq!(render::duration(850), "850ns");
    assert_eq!(render::duration(12_345), "12.3us");
    assert_eq!(render::duration(4_500_000), "4.5ms");
    assert_eq!(render::duration(2_000_000_000), "2.00s");
}

#[test]
fn streams_lanes_and_frames_views_show_their_figures() {
    let (snap, h) = (fake(), History::default());
    let l = lines(&draw(View::Streams, &snap, &h, 110, 8));
    assert_eq!(l[0], "1 stream(s), 3 lease(s), 2 registered consumer(s)");
    assert_eq!(
        words(&l[2]),
        "STREAM PROFILE EPOCH PRODUCER CONSUMERS FRAMES FRAMES/S DROPS HANDOFF P99"
    );
    assert_eq!(words(&l[3]), "7 camera 3 11 2 1000 30.0 4 -");

    let l = lines(&draw(View::Lanes, &snap, &h, 110, 6));
    assert_eq!(
        l[0],
        "1 lane(s), reactor io_uring, figures from the counters file (counters file: live)"
    );
    assert_eq!(words(&l[2]), "LANE CORE IDLE WORK/S PASSES/S IDLE % P99 PASS REACTOR AGENTS");
    assert_eq!(words(&l[3]), "main 2 backoff 123.0 2000.0 99.5% 1.5us io_uring control,metrics");

    let l = lines(&draw(View::Frames, &snap, &h, 110, 18));
    assert!(has(&l, "SESSION WINDOW IN FLIGHT FRAMES FRAMES/S RESULTS ERRORS RTT P99"), "{l:#?}");
    assert!(has(&l, "#3 4 2 900 29.5 898 5 -"), "{l:#?}");
    assert!(has(&l, "sessions 2 open (5 since start), window 4, in flight 3"), "{l:#?}");
    assert!(has(&l, "frames/s 60.0, results/s 59.5, decode p99 850ns, infer p99 4.5ms"));
    assert!(has(&l, "closes: end 1, peer_timeout 0"));
    assert!(has(&l, "BAD_MESSAGE 5") && has(&l, "BAD_SEQUENCE 0"), "{l:#?}");
}

#[test]
fn charts_draw_the_history_of_each_device() {
    let mut h = History::default();
    let mut snap = fake();
    for used in [1, 4, 8] {
        if let Section::Ok(d) = &mut snap.devices {
            d[0].dram = used * GIB;
        }
        h.push(&snap);
    }
    let l = lines(&draw(View::Charts, &snap, &h, 100, 24));
    assert!(
        l[0].starts_with("┌ Device 0 (Wormhole_B0 n300)  DRAM 66.7%  L1 12.0%  (3 of the last 120"),
        "{l:#?}"
    );
    assert!(l[1].starts_with("│100│"), "{l:#?}");
    let plotted =
        l[1..10].iter().flat_map(|r| r.chars()).filter(|c| ('\u{2801}'..='\u{28ff}').contains(c));
    assert!(plotted.count() > 0, "the line is drawn: {l:#?}");
    assert!(l[12].starts_with("┌ Device 1 (not in the device table)"), "{l:#?}");
}

#[test]
fn views_say_so_when_a_service_is_off_or_the_daemon_is_down() {
    let snap = Snapshot {
        devices: Section::Off("disabled (alloc.enabled = false)".into()),
        streams: Section::Off("disabled (pool.enabled = false)".into()),
        frames: Section::Off("not in this daemon".into()),
        ..fake()
    };
    let h = History::default();
    let first = |v| lines(&draw(v, &snap, &h, 80, 5))[0].clone();
    assert_eq!(first(View::Devices), "alloc server: disabled (alloc.enabled = false)");
    assert_eq!(first(View::Charts), "alloc server: disabled (alloc.enabled = false)");
    assert_eq!(first(View::Streams), "tensor pool: disabled (pool.enabled = false)");
    assert_eq!(first(View::Frames), "frame worker: not in this daemon");
    let down = Snapshot::default();
    for (v, what) in [(View::Devices, "alloc server"), (View::Lanes, "lanes")] {
        assert_eq!(lines(&draw(v, &down, &h, 80, 5))[0], format!("{what}: daemon not running"));
    }
    let empty = Snapshot { processes: Vec::new(), devices: Section::Ok(Vec::new()), ..fake() };
    let l = lines(&draw(View::Devices, &empty, &h, 80, 5));
    assert_eq!(&l[..2], ["alloc server: no devices", "No processes hold device memory"]);
}

#[test]
fn the_screen_has_a_header_and_tabs_and_relays_out_on_resize() {
    let (snap, h) = (fake(), History::default());
    for (w, hgt) in [(120u16, 40u16), (60, 20), (20, 5)] {
        let area = Rect::new(0, 0, w, hgt);
        let mut buf = Buffer::empty(area);
        render::screen(&snap, &h, View::Lanes, "/x/control.sock", 500, area, &mut buf);
        let l = lines(&buf);
        let head =
            "corelane top  daemon 9.9.9 pid 4242, up 1h02m03s, reactor io_uring, refresh 500 ms";
        assert_eq!(l[0], head[..usize::from(w).min(head.len())], "{w}x{hgt}");
        if w >= 60 {
            assert!(l[1].starts_with(" 1 devices   2 charts   3 streams   4 lanes "), "{l:#?}");
            assert!(l[3].starts_with("┌ Lanes"), "{l:#?}");
            assert!(l[3].ends_with('┐') && l[3].chars().count() == usize::from(w), "{l:#?}");
        }
    }
    let down = Snapshot::default();
    let area = Rect::new(0, 0, 120, 4);
    let mut buf = Buffer::empty(area);
    render::screen(&down, &h, View::Devices, "/x/control.sock", 250, area, &mut buf);
    assert_eq!(
        lines(&buf)[0],
        "corelane top  daemon not running (nothing answers at /x/control.sock); retrying every 250 ms"
    );
}

#[test]
fn an_unchanged_frame_changes_no_cell_and_a_changed_value_only_its_own() {
    let h = History::default();
    let area = Rect::new(0, 0, 100, 30);
    let frame = |snap: &Snapshot| {
        let mut buf = Buffer::empty(area);
        render::screen(snap, &h, View::Devices, "/s", 500, area, &mut buf);
        buf
    };
    let snap = fake();
    let (a, b) = (frame(&snap), frame(&snap));
    assert!(a.diff(&b).is_empty(), "the terminal gets nothing to draw for an identical frame");
    let mut moved = snap.clone();
    if let Section::Ok(d) = &mut moved.devices {
        d[0].dram = 9 * GIB;
    }
    let c = frame(&moved);
    let changed = a.diff(&c);
    assert!(!changed.is_empty());
    // Header, tabs, the box's top, then DRAM: row 3 only.
    assert!(changed.iter().all(|(_, y, _)| *y == 3), "{changed:?}");
}

/// A source that hands out fixed snapshots in turn (the last one forever).
struct Fixed(Vec<Snapshot>);

impl Source for Fixed {
    fn gather(&mut self) -> Snapshot {
        if self.0.len() > 1 {
            self.0.remove(0)
        } else {
            self.0[0].clone()
        }
    }
}

#[test]
fn once_prints_every_view_as_plain_text() {
    let mut h = History::default();
    h.push(&fake());
    let text = once_text(&fake(), &h, "/x/control.sock");
    assert!(!text.contains('\x1b'), "no escape codes");
    let l: Vec<&str> = text.lines().collect();
    assert_eq!(l[0], "corelane top  daemon 9.9.9 pid 4242, up 1h02m03s, reactor io_uring");
    for (i, name) in ["devices", "charts", "streams", "lanes", "frames"].iter().enumerate() {
        assert_eq!(
            l.iter().filter(|x| **x == format!("== {} {name} ==", i + 1)).count(),
            1,
            "{text}"
        );
    }
    assert!(l.iter().all(|x| x.chars().count() <= usize::from(super::ONCE_WIDTH)));
    assert!(l.iter().any(|x| words(x) == "777 a_very_long_pro... 0 2.5KB 1.0MB 0B 0B 0B 0B 0B"));
    assert!(l.iter().any(|x| words(x) == "7 camera 3 11 2 1000 30.0 4 -"));
    assert!(l.iter().any(|x| x.starts_with("│main ")), "{text}");
    assert!(l.iter().any(|x| words(x) == "BAD_MESSAGE 5"));
    assert_eq!(l.last().map(|x| x.starts_with('└')), Some(true), "ends with the last table");

    // Once through a source: the second gather is the one printed.
    let mut first = fake();
    first.counters_file = "first".into();
    let (text, running) =
        once_output(&mut Fixed(vec![first, fake()]), "/s", false, Duration::from_millis(1));
    assert!(running && text.contains("(counters file: live)"), "{text}");
}

#[test]
fn once_without_a_daemon_says_not_running_and_json_is_the_same_snapshot() {
    let (text, running) =
        once_output(&mut Fixed(vec![Snapshot::default()]), "/x/c.sock", false, Duration::ZERO);
    assert!(!running);
    assert_eq!(
        text,
        "corelane top  daemon not running (nothing answers at /x/c.sock)\nhint: start it with \
         `corelane run`, or point at its socket with --socket / --config"
    );

    let (json, running) = once_output(&mut Fixed(vec![fake()]), "/s", true, Duration::ZERO);
    assert!(running);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["daemon"]["state"], "running");
    assert_eq!(v["daemon"]["pid"], 4242);
    assert_eq!(v["devices"]["state"], "ok");
    assert_eq!(v["devices"]["data"][0]["dram"], 6 * GIB);
    assert_eq!(v["processes"][0]["name"], "a_very_long_process_name");
    assert_eq!(v["streams"]["data"]["streams"][0]["handoff_p99_ns"], serde_json::Value::Null);
    assert_eq!(v["lanes"]["data"]["lanes"][0]["core"], 2);
    assert_eq!(v["frames"]["data"]["errors"][0], serde_json::json!(["BAD_MESSAGE", 5]));
    let (json, _) = once_output(&mut Fixed(vec![Snapshot::default()]), "/s", true, Duration::ZERO);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(v["daemon"]["state"], "not_running");
    assert_eq!(v["lanes"]["state"], "not_running");
}

#[test]
fn devices_sit_side_by_side_when_the_terminal_is_wide_enough() {
    let (snap, h) = (fake(), History::default());
    assert_eq!(render::height(View::Devices, &snap, &h, 100), 9 + 9 + 4, "two blocks, a table");
    assert_eq!(render::height(View::Devices, &snap, &h, 140), 9 + 4, "one row of two blocks");
    let l = lines(&draw(View::Devices, &snap, &h, 140, 13));
    assert!(l[0].starts_with("┌ Device 0 (Wormhole_B0 n300)"), "{l:#?}");
    assert_eq!(
        l[0].chars().skip(70).collect::<String>().split(" ─").next(),
        Some("┌ Device 1 (not in the device table)")
    );
    assert!(l[9].starts_with("┌ Processes"), "{l:#?}");
    assert_eq!(render::height(View::Charts, &snap, &h, 100), 24);
    assert_eq!(render::height(View::Charts, &snap, &h, 170), 12);
}

/// Review2: the ledger saturates a hostile client's sizes at u64::MAX (alloc/ledger.rs), and
/// top adds L1 and CB bytes unchecked (render.rs:344, 406, snapshot.rs History::push): a debug
/// build panics (attempt to add with overflow), a release build wraps and shows the device's
/// L1 as nearly empty.
#[test]
fn saturated_usage_from_the_ledger_neither_panics_nor_wraps() {
    let d = Device {
        device: 0,
        l1: u64::MAX,
        cb: 4096,
        l1_capacity: 1 << 20,
        dram_capacity: 1 << 30,
        ..Default::default()
    };
    let snap = Snapshot {
        daemon: Daemon::Running {
            pid: 1,
            version: "x".into(),
            uptime_ms: 1,
            reactor: "poll".into(),
        },
        devices: Section::Ok(vec![d]),
        ..Default::default()
    };
    let mut history = History::default();
    history.push(&snap);
    let text = once_text(&snap, &history, "/tmp/x.sock");
    assert!(text.contains("L1 100.0%") || text.contains("100"), "{text}");
    let l1 = history.samples(0).next().map(|s| s.1);
    assert!(l1.is_some_and(|p| p >= 100.0), "L1 reads full, not nearly empty: {l1:?}");
}

/// Review2: the lane figures come from the counters file, which the metrics agent rewrites
/// every `metrics.publish_interval_ms` (default 1000), while top refreshes every 500 ms and
/// divides by its own refresh interval: work/s and passes/s read 0, 2x, 0, 2x and idle % reads
/// 0 %, 100 % (capped from 200 %), 0 %, ... Seen on a real daemon with `top --json` run six
/// times: idle_pct 0.0, 100.0, 0.0, 100.0, 0.0, 100.0.
#[test]
fn rates_of_counters_published_every_second_sampled_every_half_second_are_steady() {
    let t0 = std::time::Instant::now();
    let mut rates = Rates::default();
    let mut seen = Vec::new();
    // A counter that goes up 1000/s, published once a second; sampled at 0.25 s, 0.75 s, ...
    for i in 0..8u64 {
        let at_ms = 250 + 500 * i;
        rates.begin(t0 + Duration::from_millis(at_ms));
        let published = 1000 * (at_ms / 1000);
        // The file's heartbeat: the clock of its last publish.
        let heartbeat_ns = 1_000_000_000 * (at_ms / 1000);
        if let Some(r) = rates.rate_at("lane/main/work", published, heartbeat_ns) {
            seen.push(r.round());
        }
    }
    assert_eq!(seen.len(), 6, "a rate from the second publish on: {seen:?}");
    assert!(seen.iter().all(|r| (500.0..=1500.0).contains(r)), "work/s per refresh: {seen:?}");
}

/// Rates forget the keys a refresh did not read (sessions and streams come and go), and a
/// heartbeat that goes back (a new daemon's file) is a restart, not a rate.
#[test]
fn rates_forget_keys_gone_and_restart_on_a_heartbeat_going_back() {
    let t0 = std::time::Instant::now();
    let mut rates = Rates::default();
    rates.begin(t0);
    rates.rate_at("a", 0, 1_000);
    rates.rate_at("b", 0, 1_000);
    rates.begin(t0 + Duration::from_millis(500));
    assert_eq!(rates.rate_at("a", 100, 1_000_001_000), Some(100.0));
    rates.begin(t0 + Duration::from_millis(1000));
    assert_eq!(rates.keys(), 1, "b was not read in the previous refresh");
    assert_eq!(rates.rate_at("a", 100, 1_000_001_000), Some(100.0), "not republished: kept");
    rates.begin(t0 + Duration::from_millis(1500));
    assert_eq!(rates.rate_at("a", 5, 500), None, "the clock went back: a restart");
    rates.begin(t0 + Duration::from_millis(2000));
    assert_eq!(rates.rate_at("a", 15, 1_000_000_500), Some(10.0));
}

/// The frames service lists 64 sessions at most and counts the rest as "+N more": the view
/// says how many it does not list.
#[test]
fn the_frames_view_says_how_many_sessions_are_not_listed() {
    let mut snap = fake();
    if let Section::Ok(f) = &mut snap.frames {
        f.sessions_unlisted = 36;
    }
    let text = once_text(&snap, &History::default(), "/s");
    assert!(text.contains("+36 more not listed"), "{text}");
    assert!(!once_text(&fake(), &History::default(), "/s").contains("more not listed"));
}
