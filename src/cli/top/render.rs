//! Drawing the views: each view is a list of `Part`s (text, boxed lines, a table, a chart)
//! stacked top to bottom, rendered into a ratatui [`Buffer`], by the terminal (through
//! ratatui's diffing `Terminal`, so only changed cells reach the screen) or into a plain
//! buffer for `--once`.

use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Borders, Chart, Dataset, GraphType, Paragraph, Row, Table, Widget,
};

use super::snapshot::{pct, Daemon, Device, History, Section, Snapshot, HISTORY};
use crate::cli::alloc::{bytes, short_name};

/// The views, in key order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// `1`: usage per device and the process table.
    Devices,
    /// `2`: usage history per device.
    Charts,
    /// `3`: tensor pool streams.
    Streams,
    /// `4`: lanes.
    Lanes,
    /// `5`: the frame worker.
    Frames,
}

impl View {
    /// Every view, in key order.
    pub const ALL: [View; 5] =
        [View::Devices, View::Charts, View::Streams, View::Lanes, View::Frames];

    /// The view of key `c` (`'1'`..=`'5'`).
    pub fn from_key(c: char) -> Option<View> {
        let i = c.to_digit(10)?.checked_sub(1)? as usize;
        Self::ALL.get(i).copied()
    }

    /// Its tab name.
    pub fn name(self) -> &'static str {
        match self {
            View::Devices => "devices",
            View::Charts => "charts",
            View::Streams => "streams",
            View::Lanes => "lanes",
            View::Frames => "frames",
        }
    }
}

/// Cells of a usage bar.
pub const BAR_CELLS: usize = 25;

/// The colour of a usage bar at `pct` percent: green below 75, yellow from 75, red from 90.
pub fn level_color(pct: f64) -> Color {
    if pct >= 90.0 {
        Color::Red
    } else if pct >= 75.0 {
        Color::Yellow
    } else {
        Color::Green
    }
}

/// A usage bar: floor(pct × cells / 100) filled cells in the level colour, the rest dim.
pub fn bar(pct: f64) -> [Span<'static>; 2] {
    let filled =
        ((pct.clamp(0.0, 100.0) * BAR_CELLS as f64 / 100.0).floor() as usize).min(BAR_CELLS);
    [
        Span::styled("█".repeat(filled), Style::default().fg(level_color(pct))),
        Span::styled("░".repeat(BAR_CELLS - filled), Style::default().fg(Color::DarkGray)),
    ]
}

/// The first line of the screen: the daemon and the refresh (`None`: a one-shot snapshot).
pub fn header(snapshot: &Snapshot, socket: &str, refresh_ms: Option<u64>) -> Line<'static> {
    let refresh = |what: &str| refresh_ms.map_or(String::new(), |ms| format!("{what}{ms} ms"));
    let title = Span::styled("corelane top", Style::default().add_modifier(Modifier::BOLD));
    let text = match &snapshot.daemon {
        Daemon::Running { pid, version, uptime_ms, reactor } => format!(
            "  daemon {version} pid {pid}, up {}, reactor {reactor}{}",
            super::super::uptime(*uptime_ms),
            refresh(", refresh ")
        ),
        Daemon::NotRunning => format!(
            "  daemon not running (nothing answers at {socket}){}",
            refresh("; retrying every ")
        ),
    };
    Line::from(vec![title, Span::raw(text)])
}

/// The tab line, the current view highlighted.
pub fn tabs(current: View) -> Line<'static> {
    let mut spans = Vec::new();
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.name());
        let style = if *v == current {
            Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        } else {
            Style::default()
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::styled("  q quit", Style::default().fg(Color::DarkGray)));
    Line::from(spans)
}

/// Draws the whole screen into `area`: header, tabs, the view.
pub fn screen(
    snapshot: &Snapshot,
    history: &History,
    view: View,
    socket: &str,
    refresh_ms: u64,
    area: Rect,
    buf: &mut Buffer,
) {
    let [head, tab, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(0)])
            .areas(area);
    header(snapshot, socket, Some(refresh_ms)).render(head, buf);
    tabs(view).render(tab, buf);
    render_parts(&parts(view, snapshot, history), body, buf);
}

/// The rows a view needs at its natural size, `width` columns wide.
pub fn height(view: View, snapshot: &Snapshot, history: &History, width: u16) -> u16 {
    parts(view, snapshot, history).iter().map(|p| p.height(width)).fold(0, u16::saturating_add)
}

/// Renders `view` alone into `area`.
pub fn view(view: View, snapshot: &Snapshot, history: &History, area: Rect, buf: &mut Buffer) {
    render_parts(&parts(view, snapshot, history), area, buf);
}

/// The text of a buffer, one string per row, trailing blanks cut (no styles, no escapes).
pub fn buffer_lines(buf: &Buffer) -> Vec<String> {
    let area = buf.area;
    (area.top()..area.bottom())
        .map(|y| {
            let row: String = (area.left()..area.right())
                .map(|x| buf.cell((x, y)).map_or(" ", |c| c.symbol()))
                .collect();
            row.trim_end().to_owned()
        })
        .collect()
}

/// A piece of a view, with a natural height.
enum Part {
    /// Plain lines.
    Text(Vec<Line<'static>>),
    /// Lines in a bordered box with a title.
    Boxed(String, Vec<Line<'static>>),
    /// A bordered table: title, header, rows, column widths.
    Table(String, Vec<&'static str>, Vec<Vec<String>>, Vec<Constraint>),
    /// A bordered chart of DRAM and L1 percent (oldest first).
    Chart(String, Vec<(f64, f64)>),
    /// Parts side by side, as many columns as fit at the given minimum width each, then
    /// wrapping (one per device on a wide terminal, one under another on a narrow one).
    Grid(Vec<Part>, u16),
}

/// Columns a device block needs (label, bar, percent, bytes, borders).
const DEVICE_COLUMNS: u16 = 66;

/// Columns a chart needs (its title names the device and both percentages).
const CHART_COLUMNS: u16 = 84;

/// Rows of a chart box.
const CHART_ROWS: u16 = 12;

impl Part {
    /// The rows it needs at `width` columns.
    fn height(&self, width: u16) -> u16 {
        let n = |len: usize| u16::try_from(len).unwrap_or(u16::MAX);
        match self {
            Part::Grid(parts, min) => parts
                .chunks(grid_columns(width, *min))
                .map(|row| row.iter().map(|p| p.height(width)).max().unwrap_or(0))
                .fold(0u16, u16::saturating_add),
            Part::Text(lines) => n(lines.len()),
            Part::Boxed(_, lines) => n(lines.len()).saturating_add(2),
            Part::Table(_, _, rows, _) => n(rows.len()).saturating_add(3),
            Part::Chart(..) => CHART_ROWS,
        }
    }

    fn render(&self, area: Rect, buf: &mut Buffer) {
        let boxed =
            |title: &str| Block::default().borders(Borders::ALL).title(format!(" {title} "));
        match self {
            Part::Grid(parts, min) => {
                let cols = grid_columns(area.width, *min);
                let rows: Vec<&[Part]> = parts.chunks(cols).collect();
                let heights = rows.iter().map(|r| {
                    Constraint::Length(r.iter().map(|p| p.height(area.width)).max().unwrap_or(0))
                });
                let row_areas = Layout::vertical(heights).split(area);
                let ratio = u32::try_from(cols).unwrap_or(1);
                for (row, row_area) in rows.iter().zip(row_areas.iter()) {
                    let cells = Layout::horizontal(vec![Constraint::Ratio(1, ratio); cols])
                        .split(*row_area);
                    for (part, cell) in row.iter().zip(cells.iter()) {
                        part.render(*cell, buf);
                    }
                }
            }
            Part::Text(lines) => Paragraph::new(lines.clone()).render(area, buf),
            Part::Boxed(title, lines) => {
                Paragraph::new(lines.clone()).block(boxed(title)).render(area, buf)
            }
            Part::Table(title, header, rows, widths) => {
                let head =
                    Row::new(header.clone()).style(Style::default().add_modifier(Modifier::BOLD));
                let rows = rows.iter().map(|r| Row::new(r.clone()));
                Widget::render(
                    Table::new(rows, widths.clone()).header(head).block(boxed(title)),
                    area,
                    buf,
                );
            }
            Part::Chart(title, samples) => {
                let offset = HISTORY.saturating_sub(samples.len()) as f64;
                let dram: Vec<(f64, f64)> =
                    samples.iter().enumerate().map(|(i, s)| (offset + i as f64, s.0)).collect();
                let l1: Vec<(f64, f64)> =
                    samples.iter().enumerate().map(|(i, s)| (offset + i as f64, s.1)).collect();
                let set = |name: &'static str, color, data| {
                    Dataset::default()
                        .name(name)
                        .marker(Marker::Braille)
                        .graph_type(GraphType::Line)
                        .style(Style::default().fg(color))
                        .data(data)
                };
                let last = (HISTORY - 1) as f64;
                Chart::new(vec![set("DRAM %", Color::Green, &dram), set("L1 %", Color::Cyan, &l1)])
                    .block(boxed(title))
                    .x_axis(
                        Axis::default()
                            .bounds([0.0, last])
                            .labels([Span::raw(format!("-{HISTORY}")), Span::raw("now")]),
                    )
                    .y_axis(Axis::default().bounds([0.0, 100.0]).labels([
                        Span::raw("0"),
                        Span::raw("50"),
                        Span::raw("100"),
                    ]))
                    .render(area, buf);
            }
        }
    }
}

/// Columns of a grid whose cells need `min` columns, at `width`: at least one.
fn grid_columns(width: u16, min: u16) -> usize {
    usize::from((width / min.max(1)).max(1))
}

fn render_parts(parts: &[Part], area: Rect, buf: &mut Buffer) {
    let constraints: Vec<Constraint> = parts
        .iter()
        .enumerate()
        .map(|(i, p)| match i + 1 == parts.len() {
            true => Constraint::Min(p.height(area.width)),
            false => Constraint::Length(p.height(area.width)),
        })
        .collect();
    let areas = Layout::vertical(constraints).split(area);
    for (part, area) in parts.iter().zip(areas.iter()) {
        part.render(*area, buf);
    }
}

fn parts(view: View, s: &Snapshot, history: &History) -> Vec<Part> {
    match view {
        View::Devices => devices(s),
        View::Charts => charts(s, history),
        View::Streams => streams(s),
        View::Lanes => lanes(s),
        View::Frames => frames(s),
    }
}

/// The line a view shows for a section without data.
fn absent<T>(section: &Section<T>, what: &str) -> Option<Vec<Part>> {
    let text = match section {
        Section::Ok(_) => return None,
        Section::Off(why) => format!("{what}: {why}"),
        Section::NotRunning => format!("{what}: daemon not running"),
    };
    Some(vec![Part::Text(vec![Line::styled(text, Style::default().fg(Color::Yellow))])])
}

fn device_title(d: &Device) -> String {
    if d.arch.is_empty() {
        format!("Device {} (not in the device table)", d.device)
    } else {
        format!("Device {} ({} {})", d.device, d.arch, d.board)
    }
}

/// One usage line: label, bar against `capacity` (none for host memory), percent, bytes.
fn usage_line(label: &str, used: u64, capacity: Option<u64>) -> Line<'static> {
    let mut spans = vec![Span::raw(format!("{label:<9}"))];
    match capacity {
        Some(cap) => {
            let p = pct(used, cap);
            spans.extend(bar(p));
            let cap = if cap == 0 { "no capacity".to_owned() } else { bytes(cap) };
            spans.push(Span::raw(format!(" {p:5.1}%  {} / {cap}", bytes(used))));
        }
        None => spans.push(Span::raw(format!(
            "{:<width$} {:>6}  {} (host memory)",
            "",
            "",
            bytes(used),
            width = BAR_CELLS
        ))),
    }
    Line::from(spans)
}

fn devices(s: &Snapshot) -> Vec<Part> {
    if let Some(p) = absent(&s.devices, "alloc server") {
        return p;
    }
    let devices = s.devices.ok().map(Vec::as_slice).unwrap_or_default();
    let blocks = devices
        .iter()
        .map(|d| {
            Part::Boxed(
                device_title(d),
                vec![
                    usage_line("DRAM", d.dram, Some(d.dram_capacity)),
                    usage_line("L1", d.l1_used(), Some(d.l1_capacity)),
                    usage_line("L1_SMALL", d.l1_small, Some(d.l1_capacity)),
                    usage_line("TRACE", d.trace, Some(d.dram_capacity)),
                    usage_line("SYSTEM", d.system_memory, None),
                    usage_line("CB", d.cb, Some(d.l1_capacity)),
                    usage_line("KERNEL", d.kernel, Some(d.l1_capacity)),
                ],
            )
        })
        .collect();
    let mut parts = vec![Part::Grid(blocks, DEVICE_COLUMNS)];
    if devices.is_empty() {
        parts.push(Part::Text(vec![Line::raw("alloc server: no devices")]));
    }
    if s.processes.is_empty() {
        parts.push(Part::Text(vec![Line::raw("No processes hold device memory")]));
    } else {
        let rows = s
            .processes
            .iter()
            .map(|p| {
                vec![
                    p.pid.to_string(),
                    short_name(&p.name),
                    p.device.to_string(),
                    bytes(p.dram),
                    bytes(p.l1),
                    bytes(p.l1_small),
                    bytes(p.trace),
                    bytes(p.system_memory),
                    bytes(p.cb),
                    bytes(p.kernel),
                ]
            })
            .collect();
        let mut widths = vec![Constraint::Length(8), Constraint::Length(18), Constraint::Length(3)];
        widths.extend([Constraint::Length(8); 7]);
        parts.push(Part::Table(
            "Processes".into(),
            vec!["PID", "NAME", "DEV", "DRAM", "L1", "L1_SMALL", "TRACE", "SYSTEM", "CB", "KERNEL"],
            rows,
            widths,
        ));
    }
    parts
}

fn charts(s: &Snapshot, history: &History) -> Vec<Part> {
    if let Some(p) = absent(&s.devices, "alloc server") {
        return p;
    }
    let devices = s.devices.ok().map(Vec::as_slice).unwrap_or_default();
    if devices.is_empty() {
        return vec![Part::Text(vec![Line::raw("alloc server: no devices")])];
    }
    let charts = devices
        .iter()
        .map(|d| {
            let title = format!(
                "{}  DRAM {:.1}%  L1 {:.1}%  ({} of the last {HISTORY} samples)",
                device_title(d),
                pct(d.dram, d.dram_capacity),
                pct(d.l1_used(), d.l1_capacity),
                history.len(d.device),
            );
            Part::Chart(title, history.samples(d.device).collect())
        })
        .collect();
    vec![Part::Grid(charts, CHART_COLUMNS)]
}

fn opt_rate(r: Option<f64>) -> String {
    r.map_or("-".to_owned(), |r| format!("{r:.1}"))
}

/// A duration in ns as the unit that suits it ("850ns", "12.3us", "4.5ms").
pub fn duration(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn streams(s: &Snapshot) -> Vec<Part> {
    if let Some(p) = absent(&s.streams, "tensor pool") {
        return p;
    }
    let Some(st) = s.streams.ok() else { return Vec::new() };
    let rows = st
        .streams
        .iter()
        .map(|x| {
            vec![
                x.stream_id.to_string(),
                x.profile.clone(),
                x.epoch.to_string(),
                x.producer.map_or("-".to_owned(), |p| p.to_string()),
                x.consumers.to_string(),
                x.frames.to_string(),
                opt_rate(x.frames_per_s),
                x.drops.to_string(),
                x.handoff_p99_ns.map_or("-".to_owned(), duration),
            ]
        })
        .collect();
    let widths = [8, 10, 20, 9, 9, 10, 9, 8, 11].map(Constraint::Length).to_vec();
    vec![
        Part::Text(vec![Line::raw(format!(
            "{} stream(s), {} lease(s), {} registered consumer(s)",
            st.streams.len(),
            st.leases,
            st.registered_consumers
        ))]),
        Part::Table(
            "Streams".into(),
            vec![
                "STREAM",
                "PROFILE",
                "EPOCH",
                "PRODUCER",
                "CONSUMERS",
                "FRAMES",
                "FRAMES/S",
                "DROPS",
                "HANDOFF P99",
            ],
            rows,
            widths,
        ),
        Part::Text(vec![Line::styled(
            "handoff p99: consumers measure it and do not report it to the daemon (-)",
            Style::default().fg(Color::DarkGray),
        )]),
    ]
}

fn lanes(s: &Snapshot) -> Vec<Part> {
    if let Some(p) = absent(&s.lanes, "lanes") {
        return p;
    }
    let Some(l) = s.lanes.ok() else { return Vec::new() };
    let rows = l
        .lanes
        .iter()
        .map(|x| {
            vec![
                x.name.clone(),
                x.core.map_or("-".to_owned(), |c| c.to_string()),
                x.idle.clone(),
                opt_rate(x.work_per_s),
                opt_rate(x.passes_per_s),
                x.idle_pct.map_or("-".to_owned(), |p| format!("{p:.1}%")),
                duration(x.p99_pass_ns),
                l.reactor.clone(),
                x.agents.join(","),
            ]
        })
        .collect();
    let mut widths = [12, 5, 9, 11, 11, 7, 10, 9].map(Constraint::Length).to_vec();
    widths.push(Constraint::Min(10));
    vec![
        Part::Text(vec![Line::raw(format!(
            "{} lane(s), reactor {}, figures from the {} (counters file: {})",
            l.lanes.len(),
            l.reactor,
            l.from,
            s.counters_file
        ))]),
        Part::Table(
            "Lanes".into(),
            vec![
                "LANE", "CORE", "IDLE", "WORK/S", "PASSES/S", "IDLE %", "P99 PASS", "REACTOR",
                "AGENTS",
            ],
            rows,
            widths,
        ),
    ]
}

fn frames(s: &Snapshot) -> Vec<Part> {
    if let Some(p) = absent(&s.frames, "frame worker") {
        return p;
    }
    let Some(f) = s.frames.ok() else { return Vec::new() };
    let closes: Vec<String> = f.closes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let summary = vec![
        Line::raw(format!(
            "sessions {} open ({} since start), window {}, in flight {}",
            f.sessions, f.sessions_total, f.window, f.in_flight
        )),
        Line::raw(format!(
            "frames/s {}, results/s {}, decode p99 {}, infer p99 {}",
            opt_rate(f.frames_per_s),
            opt_rate(f.results_per_s),
            duration(f.decode_p99_ns),
            duration(f.infer_p99_ns)
        )),
        Line::raw(format!("closes: {}", closes.join(", "))),
        Line::styled(
            "RTT p99 is the agent's to measure (`corelane agent` prints it); the worker reports \
             decode and infer p99",
            Style::default().fg(Color::DarkGray),
        ),
    ];
    let rows = f.errors.iter().map(|(code, n)| vec![code.clone(), n.to_string()]).collect();
    let sessions = if f.session_list.is_empty() {
        Part::Text(vec![Line::raw("no agent sessions open")])
    } else {
        let rows = f
            .session_list
            .iter()
            .map(|x| {
                vec![
                    format!("#{}", x.id),
                    x.window.to_string(),
                    x.in_flight.to_string(),
                    x.frames.to_string(),
                    opt_rate(x.frames_per_s),
                    x.results.to_string(),
                    x.errors.to_string(),
                    "-".to_owned(),
                ]
            })
            .collect();
        let title = match f.sessions_unlisted {
            0 => "Sessions".to_owned(),
            n => format!("Sessions (the first {}; +{n} more not listed)", f.session_list.len()),
        };
        Part::Table(
            title,
            vec![
                "SESSION",
                "WINDOW",
                "IN FLIGHT",
                "FRAMES",
                "FRAMES/S",
                "RESULTS",
                "ERRORS",
                "RTT P99",
            ],
            rows,
            [8, 7, 10, 10, 9, 10, 7, 8].map(Constraint::Length).to_vec(),
        )
    };
    vec![
        Part::Boxed("Frame worker".into(), summary),
        sessions,
        Part::Table(
            "Errors by code".into(),
            vec!["CODE", "SENT"],
            rows,
            vec![Constraint::Length(22), Constraint::Length(10)],
        ),
    ]
}
