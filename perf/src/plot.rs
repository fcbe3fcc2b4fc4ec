//! `--plot FILE.svg|FILE.png`: an HDR percentile-distribution plot of every latency row.
//!
//! One panel per case, one line per implementation: latency (log axis) against percentile on
//! the usual HDR axis, x = 1 / (1 - q), so 0%, 90%, 99%, 99.9%, 99.99% are equally spaced and
//! the tail gets the room it deserves. Each line is the histogram of all rounds' samples
//! together (the one the table's percentiles come from); its last point is the max.
//!
//! Text is drawn with Hack Regular, embedded from the `epaint_default_fonts` crate and given
//! to plotters' `ab_glyph` font support, so a PNG needs no system fonts.

use std::fmt;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{Measure, Report};

/// Points per decade of the x axis.
const PER_DECADE: u32 = 20;
/// The font family name the plots use, registered in [`register_font`].
const FONT: &str = "sans-serif";

/// The two file kinds `--plot` writes, from the file name's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// `FILE.svg` or `FILE.png` (any case); anything else is an error, found before the run.
    pub fn of(path: &Path) -> Result<Self, PlotError> {
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("svg") => Ok(Format::Svg),
            Some("png") => Ok(Format::Png),
            _ => Err(PlotError::Extension(path.to_owned())),
        }
    }
}

#[derive(Debug)]
pub enum PlotError {
    Extension(PathBuf),
    NoLatencies,
    Draw { path: PathBuf, why: String },
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlotError::Extension(path) => write!(
                f,
                "--plot expects a file name ending in .svg or .png, saw {:?}",
                path.display().to_string()
            ),
            PlotError::NoLatencies => {
                write!(f, "nothing to plot: the cases run measured no latencies")
            }
            PlotError::Draw { path, why } => write!(f, "cannot draw {}: {why}", path.display()),
        }
    }
}

impl std::error::Error for PlotError {}

/// One line of the plot: an implementation's latency distribution in one case.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub case: &'static str,
    pub imp: &'static str,
    /// (1 / (1 - q), ns), x ascending.
    pub points: Vec<(f64, f64)>,
}

/// A series for every latency row of `report` that has samples, in row order.
pub fn series(report: &Report) -> Vec<Series> {
    report
        .rows
        .iter()
        .filter_map(|row| match &row.measure {
            Measure::Latency { rounds, .. } if !rounds.all().is_empty() => {
                Some(Series { case: row.case, imp: row.imp, points: curve(rounds.all()) })
            }
            _ => None,
        })
        .collect()
}

/// The percentile distribution of `h`: [`PER_DECADE`] points per decade of 1 / (1 - q) from
/// q = 0 to the decade at or above the sample count (at least 99.99%), where it ends at the
/// max. Empty for an empty histogram.
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let decades = (h.len() as f64).log10().ceil().max(4.0) as u32;
    let mut points: Vec<(f64, f64)> = (0..decades * PER_DECADE)
        .map(|i| {
            let x = 10f64.powf(f64::from(i) / f64::from(PER_DECADE));
            (x, h.value_at_quantile(1.0 - 1.0 / x) as f64)
        })
        .collect();
    points.push((10f64.powi(decades as i32), h.max() as f64));
    points
}

/// Draws `series` into `path` as `format`, under `title`.
pub fn write(path: &Path, format: Format, title: &str, series: &[Series]) -> Result<(), PlotError> {
    if series.is_empty() {
        return Err(PlotError::NoLatencies);
    }
    register_font();
    let cases = cases(series);
    let cols = if cases.len() > 1 { 2 } else { 1 };
    let rows = cases.len().div_ceil(cols);
    let size = (560 * cols as u32, 40 + 380 * rows as u32);
    let fail = |why: String| PlotError::Draw { path: path.to_owned(), why };
    match format {
        Format::Svg => {
            draw(SVGBackend::new(path, size).into_drawing_area(), title, series, (rows, cols))
                .map_err(fail)
        }
        Format::Png => {
            draw(BitMapBackend::new(path, size).into_drawing_area(), title, series, (rows, cols))
                .map_err(fail)
        }
    }
}

/// The cases of `series`, each once, in order.
fn cases(series: &[Series]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in series {
        if !out.contains(&s.case) {
            out.push(s.case);
        }
    }
    out
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    series: &[Series],
    grid: (usize, usize),
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let body = root.titled(title, (FONT, 18)).map_err(e)?;
    // One colour per implementation, the same in every panel.
    let mut imps: Vec<&str> = Vec::new();
    for s in series {
        if !imps.contains(&s.imp) {
            imps.push(s.imp);
        }
    }
    for (panel, case) in body.split_evenly(grid).iter().zip(cases(series)) {
        let mine: Vec<&Series> = series.iter().filter(|s| s.case == case).collect();
        let points = || mine.iter().flat_map(|s| s.points.iter());
        let top = points().map(|p| p.0).fold(10.0, f64::max);
        let lo = points().map(|p| p.1).fold(f64::INFINITY, f64::min).max(1.0);
        let hi = points().map(|p| p.1).fold(lo * 2.0, f64::max);
        let decades: Vec<f64> = (0..=top.log10().round() as i32).map(|d| 10f64.powi(d)).collect();
        let mut chart = ChartBuilder::on(panel)
            .caption(case, (FONT, 16))
            .margin(12)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(
                (1.0..top).log_scale().with_key_points(decades),
                (lo / 1.2..hi * 1.2).log_scale(),
            )
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency")
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| ns_label(*y))
            .label_style((FONT, 12))
            .draw()
            .map_err(e)?;
        for s in mine {
            let i = imps.iter().position(|&imp| imp == s.imp).unwrap_or(0);
            let colour = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
                .map_err(e)?
                .label(s.imp)
                // A filled box in the legend, not a line: the lines of the plot are its series.
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 4), (x + 16, y + 4)], colour.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 12))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

/// `x = 1 / (1 - q)` as a percentile: 1 -> `0%`, 10 -> `90%`, 1000 -> `99.9%`.
pub fn percentile_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".into();
    }
    let decimals = (x.log10().round() as usize).saturating_sub(2);
    format!("{:.*}%", decimals, 100.0 * (1.0 - 1.0 / x))
}

/// A latency tick: `750 ns`, `12 us`, `3.5 ms`.
fn ns_label(ns: f64) -> String {
    let (value, unit) = match ns {
        n if n >= 1e9 => (n / 1e9, "s"),
        n if n >= 1e6 => (n / 1e6, "ms"),
        n if n >= 1e3 => (n / 1e3, "us"),
        n => (n, "ns"),
    };
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0} {unit}")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// Gives plotters the embedded font, once per process.
fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TTF shipped by the crate; a failure would leave text
        // undrawable, which the drawing then reports as an error.
        let _ = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            epaint_default_fonts::HACK_REGULAR,
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Baseline, Row};
    use crate::summary::{histogram_of, Rounds, Summary};

    fn report() -> Report {
        let row = |imp, case, samples: &[u64]| {
            let h = histogram_of(samples);
            Row {
                imp,
                case,
                api: "",
                measure: Measure::Latency {
                    summary: Summary::of(&h),
                    rounds: Rounds::new(h, Vec::new()),
                    ratio_p50: None,
                    ratio_p99: None,
                    baseline: Baseline::Floor,
                    peers: Vec::new(),
                },
            }
        };
        let spread: Vec<u64> = (1..=10_000).collect();
        let slow: Vec<u64> = (1..=10_000).map(|n| 5 * n).collect();
        Report {
            suite: "spsc",
            floor: None,
            rows: vec![
                row("corelane", "rtt-8B", &spread),
                row("rtrb", "rtt-8B", &slow),
                row("corelane", "wake-parked", &spread),
                Row {
                    imp: "corelane",
                    case: "throughput-8B",
                    api: "",
                    measure: Measure::Value { value: 1, unit: "x" },
                },
            ],
            goals: Vec::new(),
            settings: serde_json::json!({}),
        }
    }

    /// The series' lines in an SVG: polylines 2 px wide (axes and ticks are 1 px).
    fn series_lines(svg: &str) -> usize {
        svg.matches("<polyline").count() - svg.matches("stroke-width=\"1\" points=").count()
    }

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("corelane-perf-plot-{}-{name}", std::process::id()))
    }

    #[test]
    fn the_curve_follows_the_histogram_to_the_max() {
        let samples: Vec<u64> = (1..=10_000).collect();
        let h = histogram_of(&samples);
        let points = curve(&h);
        assert_eq!(points.len(), 4 * PER_DECADE as usize + 1, "4 decades, then the max");
        assert_eq!(points[0], (1.0, 1.0), "q = 0: the min");
        // Within the histogram's 0.1%.
        let at = |x: f64| points.iter().find(|p| (p.0 - x).abs() < 1e-6 * x).unwrap().1;
        for (x, ns) in [(10.0, 9_000.0), (100.0, 9_900.0), (1000.0, 9_990.0)] {
            assert!((at(x) - ns).abs() <= ns / 1000.0, "at {x}: {} not {ns}", at(x));
        }
        assert_eq!(points.last(), Some(&(10_000.0, h.max() as f64)), "ends at the max");
        assert!(points.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert!(curve(&crate::summary::histogram()).is_empty());
    }

    #[test]
    fn labels_read_as_percentiles_and_durations() {
        let labels: Vec<String> =
            [1.0, 10.0, 100.0, 1000.0, 10_000.0].iter().map(|&x| percentile_label(x)).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%"]);
        assert_eq!(ns_label(750.0), "750 ns");
        assert_eq!(ns_label(1500.0), "1.5 us");
        assert_eq!(ns_label(12_000_000.0), "12 ms");
    }

    #[test]
    fn an_svg_has_one_line_per_series_and_the_axis_labels() {
        let r = report();
        let series = series(&r);
        assert_eq!(series.len(), 3, "latency rows only");
        let path = temp("a.svg");
        write(&path, Format::Svg, "spsc: latency by percentile", &series).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert_eq!(series_lines(&svg), series.len(), "one line per series");
        for text in [
            "spsc: latency by percentile",
            "rtt-8B",
            "wake-parked",
            "corelane",
            "rtrb",
            "percentile",
            "latency",
            "\n90%\n",
            "\n99.9%\n",
            "\n99.99%\n",
        ] {
            assert!(svg.contains(text), "the SVG lacks {text:?}");
        }
    }

    #[test]
    fn a_png_is_a_png() {
        let path = temp("a.png");
        write(&path, Format::Png, "spsc", &series(&report())).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "no PNG magic");
        assert!(bytes.len() > 1000, "{} bytes", bytes.len());
    }

    #[test]
    fn the_format_comes_from_the_extension() {
        assert_eq!(Format::of(Path::new("x/y.svg")).unwrap(), Format::Svg);
        assert_eq!(Format::of(Path::new("Y.PNG")).unwrap(), Format::Png);
        for bad in ["plot.jpg", "plot", "svg"] {
            let e = Format::of(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains(".svg or .png") && e.contains(bad), "{e}");
        }
        assert!(matches!(
            write(&temp("none.svg"), Format::Svg, "t", &[]),
            Err(PlotError::NoLatencies)
        ));
    }
}
