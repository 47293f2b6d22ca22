//! Line plots as PNG files: the loss curves of a run, and any other family of (x, y) lines (val
//! curves of several models, val loss against a swept setting).
//!
//! Text is drawn with DejaVu Sans, built into the binary, so plots look the same on any machine.

use anyhow::{anyhow, Context, Result};
use chargpt::runs::{MetricsRow, RunOutcome, StepRow};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;

/// Colours for successive lines (the Tableau 10 palette, which stays distinct in print and for most
/// colour-blind readers).
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// How a line is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A line, with a dot at each point when there are few.
    Line,
    /// A thin, light line (raw values under their smoothed version).
    Faint,
    /// A line without dots, for a value at every step.
    Curve,
    /// A large dot at each point (joined if there are several), for a value that stands out: a
    /// run's final exact loss.
    Mark,
}

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    /// Index into the palette [default: the series' own index].
    pub colour: Option<usize>,
}

impl Series {
    pub fn line(label: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            label: label.into(),
            points,
            style: Style::Line,
            colour: None,
        }
    }
}

/// A figure of lines with labelled axes and a legend.
#[derive(Debug, Clone)]
pub struct LinePlot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// A logarithmic x axis (for values spanning decades, such as a swept learning rate; every x
    /// must be positive).
    pub log_x: bool,
    /// The x range to show at least (a run's planned steps), padded like the data.
    pub x_span: Option<(f64, f64)>,
    /// Tick positions and their labels on the x axis (the values of a sweep) instead of round
    /// numbers.
    pub x_ticks: Option<&'a [(f64, String)]>,
    /// The smallest height of the y axis (centred on the data), so that differences at the level
    /// of run-to-run noise do not fill the whole height.
    pub min_y_span: f64,
}

impl<'a> LinePlot<'a> {
    pub fn new(title: &'a str, x_label: &'a str, y_label: &'a str, series: &'a [Series]) -> Self {
        LinePlot {
            title,
            x_label,
            y_label,
            series,
            log_x: false,
            x_span: None,
            x_ticks: None,
            min_y_span: 0.0,
        }
    }
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

/// `[min, max]` of the values, widened by 5% each side (on a log axis by a factor, the same at
/// both ends), so that no point sits on the frame; equal values get a span of `min_span` (at
/// least 1, or a factor of 4 on a log axis).
fn padded_range(values: impl Iterator<Item = f64>, log: bool, min_span: f64) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if log {
        let f = if hi > lo { (hi / lo).powf(0.06) } else { 2.0 };
        return Some((lo / f, hi * f));
    }
    let span = if hi > lo { hi - lo } else { min_span.max(1e-9) };
    if hi - lo < min_span {
        let mid = 0.5 * (lo + hi);
        (lo, hi) = (mid - 0.5 * min_span, mid + 0.5 * min_span);
        return Some((lo, hi));
    }
    let pad = 0.05 * span;
    Some((lo - pad, hi + pad))
}

/// Round tick values inside `[lo, hi]` on a linear axis, about `count` of them, each a multiple
/// of 1, 2 or 5 times a power of ten, and all labelled with the decimals that step needs (one
/// format for the whole axis: `1.50 1.55 1.60`, never `1.5 1.55 1.6`).
fn linear_ticks(lo: f64, hi: f64, count: usize) -> Vec<(f64, String)> {
    let raw = (hi - lo) / count.max(1) as f64;
    if !(raw.is_finite() && raw > 0.0) {
        return Vec::new();
    }
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last)
        .map(|i| {
            let v = i as f64 * step;
            // -0.00 reads as a mistake.
            let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
            (v, format!("{v:.decimals$}"))
        })
        .collect()
}

/// Ticks on a log axis over `[lo, hi]`: powers of ten, with 2 and 5 times them when the range
/// spans fewer than three decades, and every integer multiple within less than one. Labels share
/// one format: `3e-4`-style when any is below 0.01 or from 1e5 up, plain numbers otherwise.
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    if !(lo > 0.0 && hi > lo) {
        return Vec::new();
    }
    let decades = (hi / lo).log10();
    let mantissas: &[f64] = if decades >= 3.0 {
        &[1.0]
    } else if decades >= 0.8 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    };
    let mut values = Vec::new();
    let mut power = 10f64.powf(lo.log10().floor());
    while power <= hi {
        for m in mantissas {
            let v = m * power;
            if v >= lo && v <= hi {
                values.push(v);
            }
        }
        power *= 10.0;
    }
    label_values(&values)
}

/// Labels for arbitrary positive or negative tick values, in one format.
pub fn label_values(values: &[f64]) -> Vec<(f64, String)> {
    let scientific = values
        .iter()
        .any(|v| *v != 0.0 && !(1e-2..1e5).contains(&v.abs()));
    let decimals = values
        .iter()
        .map(|v| {
            // The fewest decimals (up to 4) that print v exactly enough.
            (0..=4)
                .find(|&d| {
                    (format!("{v:.d$}").parse::<f64>().unwrap_or(f64::NAN) - v).abs()
                        <= v.abs() * 1e-9
                })
                .unwrap_or(4)
        })
        .max()
        .unwrap_or(0);
    values
        .iter()
        .map(|&v| {
            let label = if scientific {
                scientific_label(v)
            } else {
                format!("{v:.decimals$}")
            };
            (v, label)
        })
        .collect()
}

/// `3e-4`, `2.5e-3`, `1e5`: the shortest mantissa that round-trips to 3 significant digits.
fn scientific_label(v: f64) -> String {
    let text = format!("{v:.2e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    format!("{mantissa}e{exponent}")
}

/// Roughly the width in pixels of `text` in the label font (DejaVu Sans at 15 px: about 8.5
/// px per character).
fn label_width(text: &str) -> i32 {
    (text.chars().count() as f64 * 8.5).ceil() as i32
}

/// Drops ticks (never the first) whose labels, centred at their pixel positions, would come
/// closer than 12 pixels to the previous label kept.
fn thin_ticks(ticks: Vec<(f64, String)>, pixel: impl Fn(f64) -> i32) -> Vec<(f64, String)> {
    let mut kept: Vec<(f64, String)> = Vec::new();
    let mut right_edge = i32::MIN;
    for (v, label) in ticks {
        let (x, w) = (pixel(v), label_width(&label));
        if x - w / 2 >= right_edge.saturating_add(12) {
            right_edge = x + w - w / 2;
            kept.push((v, label));
        }
    }
    kept
}

/// The plotting area inside the figure, in pixels, as `draw_chart` lays it out.
const AREA_LEFT: i32 = 16 + 72;
const AREA_RIGHT: i32 = WIDTH as i32 - 16;
const AREA_TOP: i32 = 16 + 36;
const AREA_BOTTOM: i32 = HEIGHT as i32 - 16 - 52;

/// Where the legend goes: the first corner (upper right, upper left, lower right, lower left)
/// whose box no line or point crosses; `None` when every corner is taken. Positions are
/// fractions of the plotting area (`fx`, `fy` map data to [0, 1], y upwards).
fn legend_corner(
    series: &[Series],
    fx: &dyn Fn(f64) -> f64,
    fy: &dyn Fn(f64) -> f64,
) -> Option<SeriesLabelPosition> {
    let (w, h) = legend_size(series);
    let (aw, ah) = (
        (AREA_RIGHT - AREA_LEFT) as f64,
        (AREA_BOTTOM - AREA_TOP) as f64,
    );
    // A little more than the box, in area fractions: the box sits 8 px inside the frame.
    let (bw, bh) = ((w as f64 + 16.0) / aw, (h as f64 + 16.0) / ah);
    let corners = [
        (SeriesLabelPosition::UpperRight, 1.0 - bw, 1.0 - bh),
        (SeriesLabelPosition::UpperLeft, 0.0, 1.0 - bh),
        (SeriesLabelPosition::LowerRight, 1.0 - bw, 0.0),
        (SeriesLabelPosition::LowerLeft, 0.0, 0.0),
    ];
    corners.into_iter().find_map(|(pos, x0, y0)| {
        let inside = |x: f64, y: f64| x >= x0 && x <= x0 + bw && y >= y0 && y <= y0 + bh;
        let crossed = series.iter().any(|s| {
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .map(|&(x, y)| (fx(x), fy(y)))
                .collect();
            pts.iter().any(|&(x, y)| inside(x, y))
                || pts.windows(2).any(|seg| {
                    // Sample each segment finely enough not to step over the box.
                    (1..32).any(|i| {
                        let f = i as f64 / 32.0;
                        inside(
                            seg[0].0 + f * (seg[1].0 - seg[0].0),
                            seg[0].1 + f * (seg[1].1 - seg[0].1),
                        )
                    })
                })
        });
        (!crossed).then_some(pos)
    })
}

/// The legend box's size in pixels: a row of 22 px per series, and the widest label.
fn legend_size(series: &[Series]) -> (i32, i32) {
    let widest = series
        .iter()
        .map(|s| label_width(&s.label))
        .max()
        .unwrap_or(0);
    (widest + 52, 22 * series.len() as i32 + 10)
}

/// Draws `plot` into a PNG at `path`, replacing it atomically (a reader never sees half a file).
pub fn draw_line_plot(path: &Path, plot: &LinePlot) -> Result<()> {
    register_font()?;
    let xs = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .chain(plot.x_span.into_iter().flat_map(|(a, b)| [a, b]))
        .chain(plot.x_ticks.into_iter().flatten().map(|t| t.0));
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (Some(x), Some(mut y)) = (
        padded_range(xs, plot.log_x, 1.0),
        padded_range(ys, false, plot.min_y_span.max(0.1)),
    ) else {
        return Ok(()); // nothing to draw yet
    };
    let fx = |v: f64| {
        if plot.log_x {
            (v.ln() - x.0.ln()) / (x.1.ln() - x.0.ln())
        } else {
            (v - x.0) / (x.1 - x.0)
        }
    };
    let mut legend = legend_corner(plot.series, &fx, &|v| (v - y.0) / (y.1 - y.0));
    if legend.is_none() {
        // Every corner is crossed: raise the top so that the upper right is free.
        let (_, h) = legend_size(plot.series);
        let free = (h as f64 + 24.0) / (AREA_BOTTOM - AREA_TOP) as f64;
        y.1 = y.0 + (y.1 - y.0) / (1.0 - free).max(0.3);
        legend = Some(SeriesLabelPosition::UpperRight);
    }
    let legend = legend.unwrap_or(SeriesLabelPosition::UpperRight);
    write_png(path, (WIDTH, HEIGHT), |root| {
        let (xr, yr) = ((x.0..x.1), (y.0..y.1));
        if plot.log_x {
            draw_chart(root, plot, xr.log_scale(), yr, (x, y), legend)
        } else {
            draw_chart(root, plot, xr, yr, (x, y), legend)
        }
    })
}

type Bounds = ((f64, f64), (f64, f64));

fn draw_chart<X>(
    root: &DrawingArea<BitMapBackend, Shift>,
    plot: &LinePlot,
    x: X,
    y: std::ops::Range<f64>,
    bounds: Bounds,
    legend: SeriesLabelPosition,
) -> Result<()>
where
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: ValueFormatter<f64>,
{
    let err = |e: &dyn std::fmt::Display| anyhow!("{e}");
    let ((x0, x1), (y0, y1)) = bounds;
    root.fill(&WHITE).map_err(|e| err(&e))?;
    // The title must fit: shrink its font for long titles.
    let title_size = (24.0f64)
        .min((WIDTH as f64 - 40.0) / (0.6 * plot.title.chars().count().max(1) as f64))
        .max(12.0) as u32;
    let mut chart = ChartBuilder::on(root)
        .caption(plot.title, (FAMILY, title_size))
        .margin(16)
        .x_label_area_size(52)
        .y_label_area_size(72)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    // Ticks and grid are drawn here rather than by plotters, to control their values and
    // labels (one format per axis, no overlaps, log ticks at 1, 2 and 5).
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(0)
        .y_labels(0)
        // A log axis draws its own key points whatever the count; blank them.
        .x_label_formatter(&|_| String::new())
        .y_label_formatter(&|_| String::new())
        .x_desc(plot.x_label)
        .y_desc(plot.y_label)
        .axis_desc_style((FAMILY, 17))
        .draw()
        .map_err(|e| err(&e))?;
    let to_px = |px: f64, py: f64| chart.backend_coord(&(px, py));
    let x_ticks = match plot.x_ticks {
        Some(t) => t.to_vec(),
        None if plot.log_x => log_ticks(x0, x1),
        None => linear_ticks(x0, x1, 8),
    };
    let x_ticks = thin_ticks(x_ticks, |v| to_px(v, y0).0);
    let y_ticks = linear_ticks(y0, y1, 6);
    let grid = RGBColor(228, 228, 228);
    let label = |h: HPos, v: VPos| {
        TextStyle::from((FAMILY, 15).into_font())
            .color(&BLACK)
            .pos(Pos::new(h, v))
    };
    for (v, text) in &x_ticks {
        let (px, top) = to_px(*v, y1);
        let (_, bottom) = to_px(*v, y0);
        root.draw(&PathElement::new(vec![(px, top), (px, bottom)], grid))
            .map_err(|e| err(&e))?;
        root.draw(&PathElement::new(
            vec![(px, bottom), (px, bottom + 5)],
            BLACK,
        ))
        .map_err(|e| err(&e))?;
        root.draw_text(text, &label(HPos::Center, VPos::Top), (px, bottom + 8))
            .map_err(|e| err(&e))?;
    }
    for (v, text) in &y_ticks {
        let (left, py) = to_px(x0, *v);
        let (right, _) = to_px(x1, *v);
        root.draw(&PathElement::new(vec![(left, py), (right, py)], grid))
            .map_err(|e| err(&e))?;
        root.draw(&PathElement::new(vec![(left - 5, py), (left, py)], BLACK))
            .map_err(|e| err(&e))?;
        root.draw_text(text, &label(HPos::Right, VPos::Center), (left - 8, py))
            .map_err(|e| err(&e))?;
    }
    for (i, series) in plot.series.iter().enumerate() {
        let colour = PALETTE[series.colour.unwrap_or(i) % PALETTE.len()];
        let points = series
            .points
            .iter()
            .copied()
            .filter(|&(px, py)| px.is_finite() && py.is_finite() && (!plot.log_x || px > 0.0));
        let (stroke, size) = match series.style {
            // Sparse lines (an estimate every few hundred steps) get a dot at each point, so
            // that the reader sees where the measurements are.
            Style::Line => (
                colour.stroke_width(2),
                if series.points.len() <= 60 { 3 } else { 0 },
            ),
            Style::Faint => (colour.mix(0.3).stroke_width(1), 0),
            Style::Curve => (colour.stroke_width(2), 0),
            Style::Mark => (colour.filled().stroke_width(2), 6),
        };
        let legend_stroke = stroke;
        let mark = series.style == Style::Mark;
        chart
            .draw_series(LineSeries::new(points, stroke).point_size(size))
            .map_err(|e| err(&e))?
            .label(series.label.as_str())
            .legend(move |(lx, ly)| {
                if mark {
                    Circle::new((lx + 12, ly), 5, legend_stroke).into_dyn()
                } else {
                    PathElement::new(vec![(lx, ly), (lx + 24, ly)], legend_stroke).into_dyn()
                }
            });
    }
    chart
        .configure_series_labels()
        .position(legend)
        .margin(8)
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Each point's y replaced by the mean over the `2 * h + 1` points centred on it, with `h` the
/// smaller of `half` and the points there are on each side: a smoothing that, unlike a running
/// average, does not lag behind a falling curve, and that shrinks symmetrically at the ends, so
/// the first point is the first loss (a window cut on one side only averaged the first loss with
/// the lower ones after it and started the curve 0.35 nats below the real loss).
pub fn smoothed(points: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    let mut prefix = vec![0.0f64; points.len() + 1];
    for (i, p) in points.iter().enumerate() {
        prefix[i + 1] = prefix[i] + p.1;
    }
    (0..points.len())
        .map(|i| {
            let h = half.min(i).min(points.len() - 1 - i);
            let (lo, hi) = (i - h, i + h + 1);
            (points[i].0, (prefix[hi] - prefix[lo]) / (hi - lo) as f64)
        })
        .collect()
}

/// A run's losses against the step: the training loss of every step (faint) and smoothed, the
/// train and val estimates of each evaluation, and the final exact val loss (`exact_val`, at its
/// step) where the run measured one, up to the last step done; a run that has not reached its
/// `total_steps` says how far it got in the title.
pub fn loss_plot(
    path: &Path,
    title: &str,
    metrics: &[MetricsRow],
    steps: &[StepRow],
    total_steps: usize,
    exact_val: Option<(usize, f64)>,
) -> Result<()> {
    let series = loss_series(metrics, steps, exact_val);
    let done = steps
        .last()
        .map(|r| r.step)
        .max(metrics.last().map(|r| r.step))
        .max(exact_val.map(|(step, _)| step))
        .unwrap_or(0);
    let title = if done < total_steps {
        format!("{title} (step {done} of {total_steps})")
    } else {
        title.to_string()
    };
    draw_line_plot(
        path,
        &LinePlot {
            x_span: Some((0.0, done.max(1) as f64)),
            ..LinePlot::new(
                &title,
                "step",
                "loss (cross-entropy, nats per character)",
                &series,
            )
        },
    )
}

/// Where [`loss_plot`] marks a run's final exact val loss: its last step, if it measured one.
pub fn exact_point(outcome: &RunOutcome) -> Option<(usize, f64)> {
    outcome.final_val.map(|e| (outcome.steps_done, e.loss))
}

/// The lines of [`loss_plot`]. The exact val loss is one large dot of its own colour, labelled
/// with its value: the estimates before it are means over a few batches, it is the mean over
/// every window of the val split (the number a run reports and a ladder compares), and a run
/// that ran out of time had no estimate at its last step.
fn loss_series(
    metrics: &[MetricsRow],
    steps: &[StepRow],
    exact_val: Option<(usize, f64)>,
) -> Vec<Series> {
    let raw: Vec<(f64, f64)> = steps
        .iter()
        .map(|r| (r.step as f64, r.loss as f64))
        .collect();
    // Average over about 2% of the steps on each side: enough to see the trend through the noise
    // of single batches, little enough to keep the bend of the first hundred steps.
    let half = raw.len() / 100;
    let mut series = Vec::new();
    if raw.len() > 1 {
        series.push(Series {
            label: "train, each step".into(),
            points: raw.clone(),
            style: Style::Faint,
            colour: Some(0),
        });
        series.push(Series {
            label: "train, each step (smoothed)".into(),
            points: smoothed(&raw, half),
            style: Style::Curve,
            colour: Some(0),
        });
    }
    series.push(Series {
        label: "train (estimate)".into(),
        points: metrics
            .iter()
            .map(|r| (r.step as f64, r.train_loss as f64))
            .collect(),
        style: Style::Line,
        colour: Some(2),
    });
    series.push(Series {
        label: "val (estimate)".into(),
        points: metrics
            .iter()
            .map(|r| (r.step as f64, r.val_loss as f64))
            .collect(),
        style: Style::Line,
        colour: Some(1),
    });
    if let Some((step, loss)) = exact_val {
        series.push(Series {
            label: format!("val (exact, all of val): {loss:.4}"),
            points: vec![(step as f64, loss)],
            style: Style::Mark,
            colour: Some(3),
        });
    }
    series
}

/// One (T, T) map of attention weights, row-major: row = query position (the character that
/// attends), column = key position (the character attended to). Entries above the diagonal are
/// the causal mask's (a position never sees its future) and are drawn grey, not as weight 0.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub weights: Vec<f32>,
}

/// A grid of heatmaps (`rows` x `cols`, row-major in `maps`) sharing the `labels` of both axes
/// and one colour scale from 0 to 1.
#[derive(Debug, Clone)]
pub struct HeatmapGrid<'a> {
    pub title: &'a str,
    /// One label per position (T of them).
    pub labels: &'a [String],
    pub rows: usize,
    pub cols: usize,
    pub maps: &'a [Heatmap],
}

/// Viridis at nine evenly spaced points: perceptually uniform, dark for 0 and bright for 1, so a
/// strong weight stands out whatever the colour vision of the reader.
const VIRIDIS: [(u8, u8, u8); 9] = [
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
];
const MASKED: RGBColor = RGBColor(228, 228, 228);
/// Labels of strongly attended characters (see [`labelled_positions`]).
const STRONG_LABEL: RGBColor = RGBColor(200, 30, 30);

/// Distinct colours on the scale: 65 steps of 1/64 look continuous, and far fewer distinct pixels
/// keep the PNG small.
const LEVELS: f32 = 64.0;

/// The colour of weight `w` (clamped to [0, 1], rounded to a multiple of 1/64): linear
/// interpolation between viridis points.
pub fn weight_colour(w: f32) -> RGBColor {
    let w = if w.is_finite() {
        w.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = (w * LEVELS).round() / LEVELS * (VIRIDIS.len() - 1) as f32;
    let i = (x.floor() as usize).min(VIRIDIS.len() - 2);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    let mix = |a: u8, b: u8| (a as f32 + f * (b as f32 - a as f32)).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// How a heatmap of `t` positions is laid out: `px` pixels per position, and every `every`-th
/// position labelled with a font of `font` pixels.
///
/// A map aims at about 420 pixels a side (at least 160), with between 2 and 22 pixels per
/// position unless the prompt is very short: a grid of 4 x 4 heads stays under 2000 pixels a side
/// (and its PNG small). A label needs about 9 pixels, so when positions are closer than that only
/// every k-th one is labelled (k = ceil(9 / px)): all of them up to 46 positions, every 2nd up to
/// 84, every 3rd up to 140, every 5th beyond (the 256 of the lecture's block).
pub fn heatmap_scale(t: usize) -> (u32, usize, u32) {
    let t = t.max(1) as u32;
    // At least 160 pixels a side, so that a map of a short prompt still has room for its title.
    let px = (420 / t).clamp(2, 22).max(160u32.div_ceil(t));
    let every = 9u32.div_ceil(px) as usize;
    let font = (px * every as u32).clamp(9, 15);
    (px, every, font)
}

/// Attention a key position receives from the queries after it, in units of whole rows: a head
/// that keeps returning to one newline gives it several, one that looks at the previous
/// character gives every position about 1. From this many on, a position counts as strongly
/// attended, and is labelled even when its neighbours are not.
const STRONG_ATTENTION: f32 = 2.0;

/// The positions labelled on a map's axes: every position strongly attended (most attended
/// first), then every `every`-th position where there is room, keeping labels at least
/// `ceil(9 / px)` positions apart. Returns (position, strong) in order.
fn labelled_positions(weights: &[f32], t: usize, every: usize) -> Vec<(usize, bool)> {
    let mut received = vec![0.0f32; t];
    for q in 0..t {
        for (k, slot) in received.iter_mut().enumerate().take(q) {
            *slot += weights.get(q * t + k).copied().unwrap_or(0.0);
        }
    }
    let gap = every.max(1);
    let mut strong: Vec<usize> = (0..t)
        .filter(|&k| every > 1 && received[k] >= STRONG_ATTENTION)
        .collect();
    strong.sort_by(|&a, &b| received[b].total_cmp(&received[a]));
    let mut chosen: Vec<(usize, bool)> = Vec::new();
    let free =
        |chosen: &[(usize, bool)], k: usize| chosen.iter().all(|&(c, _)| c.abs_diff(k) >= gap);
    for k in strong {
        if free(&chosen, k) {
            chosen.push((k, true));
        }
    }
    for k in (0..t).step_by(gap) {
        if free(&chosen, k) {
            chosen.push((k, false));
        }
    }
    chosen.sort_unstable();
    chosen
}

/// A title as one or two lines that fit `width` pixels at `size` (DejaVu Sans averages about
/// 0.55 of the font size per character), shrinking the font as far as 13 if two lines are not
/// enough.
fn fit_title(title: &str, width: u32, mut size: u32) -> (Vec<String>, u32) {
    let fits =
        |line: &str, size: u32| line.chars().count() as f64 * 0.55 * size as f64 <= width as f64;
    loop {
        if fits(title, size) {
            return (vec![title.to_string()], size);
        }
        // Break at the space nearest the middle.
        let chars: Vec<char> = title.chars().collect();
        let middle = chars.len() / 2;
        let split = (0..chars.len())
            .filter(|&i| chars[i] == ' ')
            .min_by_key(|&i| i.abs_diff(middle));
        if let Some(i) = split {
            let (a, b): (String, String) =
                (chars[..i].iter().collect(), chars[i + 1..].iter().collect());
            if (fits(&a, size) && fits(&b, size)) || size <= 13 {
                return (vec![a, b], size);
            }
        } else if size <= 13 {
            return (vec![title.to_string()], size);
        }
        size -= 1;
    }
}

/// Draws `grid` into a PNG at `path`, replacing it atomically.
pub fn draw_heatmap_grid(path: &Path, grid: &HeatmapGrid) -> Result<()> {
    register_font()?;
    let t = grid.labels.len();
    if t == 0 || grid.rows * grid.cols != grid.maps.len() {
        return Err(anyhow!("nothing to draw"));
    }
    let (px, every, font) = heatmap_scale(t);
    let side = px * t as u32;
    let label_band = font + 8;
    let title_band = 26;
    let gap = 18;
    let panel_w = label_band + side + gap;
    let panel_h = title_band + side + label_band + gap;
    let (footer, bar_w) = (48u32, 90u32);
    let (bar_h, legend_h) = (240u32, 50u32);
    let width = (16 + panel_w * grid.cols as u32 + bar_w).max(560);
    let (title_lines, title_size) = fit_title(grid.title, width - 32, 22);
    let header = 18 + (title_size + 6) * title_lines.len() as u32;
    let height = header + (panel_h * grid.rows as u32).max(title_band + bar_h + legend_h) + footer;
    write_png(path, (width, height), |root| {
        let err = |e: &dyn std::fmt::Display| anyhow!("{e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let centred = |size: u32| {
            TextStyle::from((FAMILY, size).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        for (i, line) in title_lines.iter().enumerate() {
            let y = 12 + (title_size + 6) as i32 * i as i32 + title_size as i32 / 2;
            root.draw_text(line, &centred(title_size), (width as i32 / 2, y))
                .map_err(|e| err(&e))?;
        }
        let label_style = centred(font);
        let strong_style = TextStyle::from((FAMILY, font).into_font())
            .color(&STRONG_LABEL)
            .pos(Pos::new(HPos::Center, VPos::Center));
        for (index, map) in grid.maps.iter().enumerate() {
            let (r, c) = ((index / grid.cols) as u32, (index % grid.cols) as u32);
            let x0 = (16 + c * panel_w + label_band) as i32;
            let y0 = (header + r * panel_h + title_band) as i32;
            root.draw_text(
                &map.title,
                &centred(16),
                (x0 + side as i32 / 2, y0 - title_band as i32 / 2),
            )
            .map_err(|e| err(&e))?;
            for q in 0..t {
                for k in 0..t {
                    let colour = if k > q {
                        MASKED
                    } else {
                        weight_colour(map.weights.get(q * t + k).copied().unwrap_or(0.0))
                    };
                    let (x, y) = (x0 + (k as u32 * px) as i32, y0 + (q as u32 * px) as i32);
                    root.draw(&Rectangle::new(
                        [(x, y), (x + px as i32, y + px as i32)],
                        colour.filled(),
                    ))
                    .map_err(|e| err(&e))?;
                }
            }
            let half = px as i32 / 2;
            for (i, strong) in labelled_positions(&map.weights, t, every) {
                let label = &grid.labels[i];
                let style = if strong { &strong_style } else { &label_style };
                let at = (i as u32 * px) as i32 + half;
                // Keys along the bottom, queries down the left side.
                root.draw_text(
                    label,
                    style,
                    (x0 + at, y0 + side as i32 + label_band as i32 / 2),
                )
                .map_err(|e| err(&e))?;
                root.draw_text(label, style, (x0 - label_band as i32 / 2, y0 + at))
                    .map_err(|e| err(&e))?;
            }
        }
        // The colour scale.
        let bx = (16 + panel_w * grid.cols as u32 + 10) as i32;
        let (by, bh) = (header as i32 + title_band as i32, bar_h as i32);
        for i in 0..bh {
            let w = 1.0 - i as f32 / (bh - 1) as f32;
            root.draw(&Rectangle::new(
                [(bx, by + i), (bx + 18, by + i + 1)],
                weight_colour(w).filled(),
            ))
            .map_err(|e| err(&e))?;
        }
        let left = TextStyle::from((FAMILY, 13).into_font())
            .color(&BLACK)
            .pos(Pos::new(HPos::Left, VPos::Center));
        for v in [0.0f32, 0.25, 0.5, 0.75, 1.0] {
            let y = by + ((1.0 - v) * (bh - 1) as f32).round() as i32;
            root.draw_text(&format!("{v}"), &left, (bx + 24, y))
                .map_err(|e| err(&e))?;
        }
        root.draw_text("weight", &left, (bx, by - 14))
            .map_err(|e| err(&e))?;
        root.draw(&Rectangle::new(
            [(bx, by + bh + 14), (bx + 18, by + bh + 32)],
            MASKED.filled(),
        ))
        .map_err(|e| err(&e))?;
        root.draw_text("masked", &left, (bx + 24, by + bh + 23))
            .map_err(|e| err(&e))?;
        let grey = TextStyle::from((FAMILY, 14).into_font())
            .color(&RGBColor(80, 80, 80))
            .pos(Pos::new(HPos::Left, VPos::Center));
        let labelled = if every > 1 {
            format!(
                "; labelled: every {} character, and in red those a head attends to strongly",
                ordinal(every)
            )
        } else {
            String::new()
        };
        let lines = [
            format!("rows: the character attending (query){labelled}"),
            "columns: the characters it attends to (keys)".to_string(),
        ];
        for (i, line) in lines.iter().enumerate() {
            let y = (height - footer) as i32 + 12 + 18 * i as i32;
            root.draw_text(line, &grey, (16, y)).map_err(|e| err(&e))?;
        }
        Ok(())
    })
}

/// `2nd`, `3rd`, `11th`, `21st`.
fn ordinal(n: usize) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

/// Draws a `size` bitmap with `draw` and writes it as a PNG at `path` through a temporary file
/// and a rename, so that a reader never sees half an image.
fn write_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("plot");
    // The image encoder picks the format from the extension, so the temporary name keeps it.
    let tmp = dir.join(format!(".{stem}.tmp-{}.png", std::process::id()));
    let drawn = {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        draw(&root).and_then(|()| root.present().map_err(|e| anyhow!("{e}")))
    };
    let result = drawn.and_then(|()| std::fs::rename(&tmp, path).map_err(Into::into));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot draw {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_pad_so_that_no_point_sits_on_the_frame() {
        let (lo, hi) = padded_range([1.0, 3.0].into_iter(), false, 0.0).unwrap();
        assert!((lo - 0.9).abs() < 1e-12 && (hi - 3.1).abs() < 1e-12);
        // One value, or values closer than the minimum span: centred, at least that tall.
        assert_eq!(
            padded_range([4.22].into_iter(), false, 0.1),
            Some((4.17, 4.27))
        );
        assert_eq!(padded_range([f64::NAN].into_iter(), false, 0.0), None);
        let (lo, hi) = padded_range([-1.0, 1e-4, 1e-2].into_iter(), true, 0.0).unwrap();
        assert!(lo > 0.0 && lo < 1e-4 && hi > 1e-2);
    }

    #[test]
    fn ticks_share_one_format_per_axis() {
        let labels = |t: Vec<(f64, String)>| t.into_iter().map(|(_, l)| l).collect::<Vec<_>>();
        // A single evaluation at 4.22: distinct labels, all with the same decimals.
        let (lo, hi) = padded_range([4.22].into_iter(), false, 0.1).unwrap();
        let y = labels(linear_ticks(lo, hi, 6));
        assert!(y.len() >= 3, "{y:?}");
        let mut unique = y.clone();
        unique.dedup();
        assert_eq!(unique, y);
        assert!(y.iter().all(|l| l.len() == y[0].len()), "{y:?}");
        assert_eq!(
            labels(linear_ticks(-0.4, 2000.0, 8)),
            ["0", "500", "1000", "1500", "2000"]
        );
        // A learning-rate sweep: 1-2-5 ticks in scientific notation throughout.
        assert_eq!(labels(log_ticks(2.5e-4, 4e-3)), ["5e-4", "1e-3", "2e-3"]);
        assert_eq!(
            labels(log_ticks(6.5e-3, 0.011)),
            ["7e-3", "8e-3", "9e-3", "1e-2"]
        );
        assert_eq!(
            labels(label_values(&[3e-4, 1e-3, 3e-3])),
            ["3e-4", "1e-3", "3e-3"]
        );
        assert_eq!(
            labels(label_values(&[0.5, 1.0, 2.0])),
            ["0.5", "1.0", "2.0"]
        );
        assert_eq!(
            labels(label_values(&[1.0, 2.0, 4.0, 8.0])),
            ["1", "2", "4", "8"]
        );
    }

    #[test]
    fn close_tick_labels_are_thinned() {
        let ticks: Vec<(f64, String)> = (0..10).map(|i| (i as f64, format!("{i}e-3"))).collect();
        // 10 px apart: labels 34 px wide cannot all be kept.
        let kept = thin_ticks(ticks, |v| (v * 10.0) as i32);
        assert!(kept.len() < 5 && kept[0].0 == 0.0, "{kept:?}");
        for pair in kept.windows(2) {
            assert!((pair[1].0 - pair[0].0) * 10.0 >= 34.0 + 12.0);
        }
    }

    #[test]
    fn the_legend_avoids_the_points() {
        let fx = |x: f64| x;
        // A falling curve passes through the upper left and the lower right.
        let falling = [Series::line(
            "val",
            vec![(0.0, 1.0), (0.5, 0.3), (1.0, 0.1)],
        )];
        assert!(matches!(
            legend_corner(&falling, &fx, &fx),
            Some(SeriesLabelPosition::UpperRight)
        ));
        // A point in the upper right moves the legend elsewhere.
        let rising = [Series::line("val", vec![(0.0, 0.1), (1.0, 0.98)])];
        assert!(matches!(
            legend_corner(&rising, &fx, &fx),
            Some(SeriesLabelPosition::UpperLeft)
        ));
        // Points in all four corners: none is free.
        let corners = [Series::line(
            "x",
            vec![(0.01, 0.01), (0.99, 0.01), (0.99, 0.99), (0.01, 0.99)],
        )];
        assert!(legend_corner(&corners, &fx, &fx).is_none());
    }

    #[test]
    fn a_loss_plot_is_a_png_for_any_number_of_points() {
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
        let steps: Vec<StepRow> = (1..=400)
            .map(|i| StepRow {
                step: i,
                loss: 4.0 - i as f32 / 200.0,
                lr: 1e-3,
                grad_norm: 1.0,
                elapsed_s: i as f64,
            })
            .collect();
        for (m, s) in [
            (&rows[..], &steps[..]),
            (&rows[..1], &steps[..0]),
            (&rows[..1], &steps[..30]),
        ] {
            loss_plot(&path, "test", m, s, 2000, None).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        }
        loss_plot(&path, "test", &rows, &steps, 2000, Some((400, 1.95))).unwrap();
        // Nothing left behind but the plot.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // The final exact val loss is one dot of its own, at its step, with its value.
        let with_exact = loss_series(&rows, &steps, Some((400, 1.95)));
        let exact: Vec<_> = with_exact
            .iter()
            .filter(|s| s.style == Style::Mark)
            .collect();
        assert_eq!(exact.len(), 1);
        assert_eq!(exact[0].points, vec![(400.0, 1.95)]);
        assert_eq!(exact[0].label, "val (exact, all of val): 1.9500");
        let without = loss_series(&rows, &steps, None);
        assert_eq!(without.len() + 1, with_exact.len());
        assert!(without.iter().all(|s| s.style != Style::Mark));
        let smooth = smoothed(&[(1.0, 2.0), (2.0, 2.0), (3.0, 5.0), (4.0, 3.0)], 1);
        let close = |a: &[(f64, f64)], b: &[f64]| {
            a.len() == b.len() && a.iter().zip(b).all(|(p, y)| (p.1 - y).abs() < 1e-12)
        };
        // The window shrinks on both sides at the ends: the end points keep their own values.
        assert!(close(&smooth, &[2.0, 3.0, 10.0 / 3.0, 3.0]), "{smooth:?}");
        let falling: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, 4.2 - 0.02 * i as f64))
            .collect();
        let smooth_fall = smoothed(&falling, 10);
        // A straight line is its own centred average, ends included.
        assert!(close(
            &smooth_fall,
            &falling.iter().map(|p| p.1).collect::<Vec<_>>()
        ));
        let ys: Vec<f64> = smooth.iter().map(|p| p.1).collect();
        assert!(close(&smoothed(&smooth, 0), &ys));
    }

    #[test]
    fn weights_map_onto_viridis_and_labels_thin_out_for_long_prompts() {
        assert_eq!(weight_colour(0.0), RGBColor(68, 1, 84));
        assert_eq!(weight_colour(1.0), RGBColor(253, 231, 37));
        assert_eq!(weight_colour(2.0), weight_colour(1.0));
        assert_eq!(weight_colour(f32::NAN), weight_colour(0.0));
        assert_eq!(weight_colour(0.5), RGBColor(33, 144, 141));
        assert_eq!(
            [2, 3, 5, 11, 21].map(ordinal),
            ["2nd", "3rd", "5th", "11th", "21st"]
        );
        // Every character labelled for short prompts, fewer as the block grows.
        assert_eq!(heatmap_scale(8), (22, 1, 15));
        assert_eq!(heatmap_scale(46).1, 1);
        assert_eq!(heatmap_scale(47).1, 2);
        assert_eq!(heatmap_scale(84).1, 2);
        assert_eq!(heatmap_scale(85).1, 3);
        assert_eq!(heatmap_scale(140).1, 3);
        assert_eq!(heatmap_scale(141).1, 5);
        let (px, every, font) = heatmap_scale(256);
        assert_eq!((px, every), (2, 5));
        assert!(font >= 9);
    }

    #[test]
    fn strongly_attended_characters_are_always_labelled() {
        // 60 positions, every 2nd labelled; every query puts 0.9 on position 37 (odd, so not
        // among the regular labels) once it can see it.
        let t = 60;
        let mut w = vec![0.0f32; t * t];
        for q in 0..t {
            if q > 37 {
                w[q * t + 37] = 0.9;
                w[q * t + q] = 0.1;
            } else {
                w[q * t + q] = 1.0;
            }
        }
        let labels = labelled_positions(&w, t, 2);
        assert!(labels.contains(&(37, true)), "{labels:?}");
        // Its neighbours give way, and labels stay apart.
        assert!(!labels.iter().any(|&(k, _)| k == 36 || k == 38));
        for pair in labels.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= 2, "{labels:?}");
        }
        // Every position labelled: nothing to single out.
        assert!(labelled_positions(&w, t, 1)
            .iter()
            .all(|&(_, strong)| !strong));
        let (lines, size) = fit_title(&"attention weights of a model ".repeat(4), 500, 22);
        assert_eq!(lines.len(), 2);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() as f64 * 0.55 * size as f64 <= 500.0));
    }

    #[test]
    fn a_heatmap_grid_is_a_png_of_the_expected_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("att.png");
        let labels: Vec<String> = "ab c".chars().map(|c| c.to_string()).collect();
        let maps: Vec<Heatmap> = (0..6)
            .map(|i| Heatmap {
                title: format!("map {i}"),
                weights: vec![0.25; 16],
            })
            .collect();
        let grid = HeatmapGrid {
            title: "test",
            labels: &labels,
            rows: 2,
            cols: 3,
            maps: &maps,
        };
        draw_heatmap_grid(&path, &grid).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        // The PNG header's width grows with the columns and the height with the rows.
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert!(width > height, "{width} x {height}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let bad = HeatmapGrid { rows: 1, ..grid };
        assert!(draw_heatmap_grid(&path, &bad).is_err());
    }
}
