//! Line plots as PNG files: the loss curves of a run, and any other family of (x, y) lines (val
//! curves of several models, val loss against a swept setting).
//!
//! Text is drawn with DejaVu Sans, built into the binary, so plots look the same on any machine.

use anyhow::{anyhow, Context, Result};
use chargpt::training::MetricsRow;
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
    draw_line_plot_spanning(path, plot, 0.0)
}

/// [`draw_line_plot`] with a linear y axis at least `min_span` tall (centred on the data), so that
/// differences at the level of run-to-run noise do not fill the whole height.
pub fn draw_line_plot_spanning(path: &Path, plot: &LinePlot, min_span: f64) -> Result<()> {
    register_font()?;
    let xs = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0));
    let ys = plot
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1));
    let (Some(x), Some(mut y)) = (padded_range(xs, plot.log_x), padded_range(ys, plot.log_y))
    else {
        return Ok(()); // nothing to draw yet
    };
    if !plot.log_y && y.1 - y.0 < min_span {
        let mid = 0.5 * (y.0 + y.1);
        y = (mid - 0.5 * min_span, mid + 0.5 * min_span);
    }
    write_png(path, (WIDTH, HEIGHT), |root| {
        let (x, y) = ((x.0..x.1), (y.0..y.1));
        match (plot.log_x, plot.log_y) {
            (false, false) => draw_chart(root, plot, x, y),
            (true, false) => draw_chart(root, plot, x.log_scale(), y),
            (false, true) => draw_chart(root, plot, x, y.log_scale()),
            (true, true) => draw_chart(root, plot, x.log_scale(), y.log_scale()),
        }
    })
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
    let (header, footer, bar_w) = (44u32, 48u32, 90u32);
    let (bar_h, legend_h) = (240u32, 50u32);
    let width = (16 + panel_w * grid.cols as u32 + bar_w).max(560);
    let height = header + (panel_h * grid.rows as u32).max(title_band + bar_h + legend_h) + footer;
    write_png(path, (width, height), |root| {
        let err = |e: &dyn std::fmt::Display| anyhow!("{e}");
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let centred = |size: u32| {
            TextStyle::from((FAMILY, size).into_font())
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center))
        };
        root.draw_text(grid.title, &centred(22), (width as i32 / 2, 22))
            .map_err(|e| err(&e))?;
        let label_style = centred(font);
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
            for (i, label) in grid.labels.iter().enumerate().step_by(every) {
                let at = (i as u32 * px) as i32 + half;
                // Keys along the bottom, queries down the left side.
                root.draw_text(
                    label,
                    &label_style,
                    (x0 + at, y0 + side as i32 + label_band as i32 / 2),
                )
                .map_err(|e| err(&e))?;
                root.draw_text(label, &label_style, (x0 - label_band as i32 / 2, y0 + at))
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
            format!("; every {} character labelled", ordinal(every))
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
