//! How the command line writes numbers, times and tables.

/// `1,234,567`.
pub fn thousands(n: usize) -> String {
    chargpt::limits::number(n as f64)
}

/// `12.3 s`, `2m 05s`, `1h 02m`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{seconds:.1} s")
    }
}

/// A table with a header row, columns padded to their widest cell; `right` columns are
/// right-aligned (numbers).
pub fn text_table(header: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("{pad}{cell}  "));
            } else {
                out.push_str(&format!("{cell}{pad}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut text = line(header);
    for row in rows {
        text.push('\n');
        text.push_str(&line(row));
    }
    text
}

/// The same table in Markdown.
pub fn markdown_table(header: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut text = format!("| {} |\n|", header.join(" | "));
    for i in 0..header.len() {
        text.push_str(if right.get(i).copied().unwrap_or(false) {
            "---:|"
        } else {
            "---|"
        });
    }
    for row in rows {
        text.push_str(&format!("\n| {} |", row.join(" | ")));
    }
    text.push('\n');
    text
}

/// `12.3k tok/s`, `850 tok/s`.
pub fn rate(tokens_per_s: f64) -> String {
    if tokens_per_s >= 1000.0 {
        format!("{:.1}k tok/s", tokens_per_s / 1000.0)
    } else {
        format!("{tokens_per_s:.0} tok/s")
    }
}

/// `ETA 4m 05s`, or `ETA ?` before anything was measured.
pub fn eta(seconds: f64) -> String {
    if seconds > 0.0 && seconds.is_finite() {
        duration(seconds)
    } else {
        "?".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_render_as_markdown() {
        let header = ["a".to_string(), "num".to_string()];
        let rows = vec![vec!["long name".to_string(), "1".to_string()]];
        let text = text_table(&header, &rows, &[false, true]);
        assert_eq!(text, "a          num\nlong name    1");
        let md = markdown_table(&header, &rows, &[false, true]);
        assert_eq!(md, "| a | num |\n|---|---:|\n| long name | 1 |\n");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
    }
}
