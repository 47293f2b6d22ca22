//! Line plots as PNG files: the loss curves of a run, and any other family of (x, y) lines (val
//! curves of several models, val loss against a swept setting).
//!
//! Text is drawn with DejaVu Sans, built into the binary, so plots look the same on any machine.

use anyhow::{anyhow, Context, Result};
use chargpt::training::MetricsRow;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;

/// Colours for successive lines (the Tableau palette, which stays distinct in print and for most
/// colour-blind readers).
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// A figure of lines with labelled axes and a legend.
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// Logarithmic axes (for values spanning decades, such as a swept learning rate; every value
    /// on a log axis must be positive).
    pub log_x: bool,
    pub log_y: bool,
}

fn register_font() -> Result<()> {
    static REGISTER: Once = Once::new();
    let mut result = Ok(());
    REGISTER.call_once(|| {
        result = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| anyhow!("the built-in font could not be loaded"));
    });
    result
}

/// `[min, max]` of the values, widened by 5% each side (or by 1 when they are all equal).
fn padded_range(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if log {
        // Pad by a factor, so that the padding looks the same at both ends.
        let f = if hi > lo { (hi / lo).powf(0.05) } else { 2.0 };
        return Some((lo / f, hi * f));
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 1.0 };
    Some((lo - pad, hi + pad))
}

/// Short tick labels: `1.5`, `2000`, `3e-4`.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-2..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Draws `plot` into a PNG at `path`, replacing it atomically (a reader never sees half a file).
pub fn draw_line_plot(path: &Path, plot: &LinePlot) -> Result<()> {
    register_font()?;
    let xs = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (Some(x), Some(y)) = (padded_range(xs, plot.log_x), padded_range(ys, plot.log_y)) else {
        return Ok(()); // nothing to draw yet
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot");
    // The image encoder picks the format from the extension, so the temporary name keeps it.
    let tmp = dir.join(format!(".{stem}.tmp-{}.png", std::process::id()));
    let drawn = {
        let root = BitMapBackend::new(&tmp, (WIDTH, HEIGHT)).into_drawing_area();
        let (x, y) = ((x.0..x.1), (y.0..y.1));
        match (plot.log_x, plot.log_y) {
            (false, false) => draw_chart(&root, plot, x, y),
            (true, false) => draw_chart(&root, plot, x.log_scale(), y),
            (false, true) => draw_chart(&root, plot, x, y.log_scale()),
            (true, true) => draw_chart(&root, plot, x.log_scale(), y.log_scale()),
        }
        .and_then(|()| root.present().map_err(|e| anyhow!("{e}")))
    };
    let result = drawn.and_then(|()| std::fs::rename(&tmp, path).map_err(Into::into));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot draw {}", path.display()))
}

fn draw_chart<X, Y>(
    root: &DrawingArea<BitMapBackend, Shift>,
    plot: &LinePlot,
    x: X,
    y: Y,
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    Y: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| anyhow!("{e}");
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(root)
        .caption(plot.title, (FAMILY, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .light_line_style(RGBColor(235, 235, 235))
        .bold_line_style(RGBColor(210, 210, 210))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, series) in plot.series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points = series.points.iter().copied().filter(|&(px, py)| {
            px.is_finite()
                && py.is_finite()
                && (!plot.log_x || px > 0.0)
                && (!plot.log_y || py > 0.0)
        });
        // Sparse lines (a loss estimate every few hundred steps) get a dot at each point, so
        // that the reader sees where the measurements are.
        let size = if series.points.len() <= 60 { 3 } else { 0 };
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)).point_size(size))
            .map_err(|e| err(&e))?
            .label(series.label.as_str())
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 24, ly)], colour.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FAMILY, 16))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

/// The train and val loss estimates of a run against the step.
pub fn loss_plot(path: &Path, title: &str, metrics: &[MetricsRow]) -> Result<()> {
    let series = [
        Series {
            label: "train".into(),
            points: metrics
                .iter()
                .map(|r| (r.step as f64, r.train_loss as f64))
                .collect(),
        },
        Series {
            label: "val".into(),
            points: metrics
                .iter()
                .map(|r| (r.step as f64, r.val_loss as f64))
                .collect(),
        },
    ];
    draw_line_plot(
        path,
        &LinePlot {
            title,
            x_label: "step",
            y_label: "loss (cross-entropy, nats per character)",
            series: &series,
            log_x: false,
            log_y: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_and_skip_what_a_log_axis_cannot_show() {
        assert_eq!(
            padded_range([1.0, 3.0].into_iter(), false),
            Some((0.9, 3.1))
        );
        assert_eq!(padded_range([2.0].into_iter(), false), Some((1.0, 3.0)));
        assert_eq!(padded_range([f64::NAN].into_iter(), false), None);
        let (lo, hi) = padded_range([-1.0, 1e-4, 1e-2].into_iter(), true).unwrap();
        assert!(lo > 0.0 && lo < 1e-4 && hi > 1e-2);
        assert_eq!(tick(1.5), "1.5");
        assert_eq!(tick(2000.0), "2000");
        assert_eq!(tick(3e-4), "3e-4");
        assert_eq!(tick(1.25), "1.25");
    }

    #[test]
    fn a_loss_plot_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loss.png");
        let rows: Vec<MetricsRow> = (0..5)
            .map(|i| MetricsRow {
                step: i * 100,
                train_loss: 4.0 - i as f32 * 0.5,
                val_loss: 4.1 - i as f32 * 0.45,
                lr: 1e-3,
                tokens_per_s: 1e4,
                elapsed_s: i as f64,
            })
            .collect();
        loss_plot(&path, "test", &rows).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // Nothing left behind but the plot.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
