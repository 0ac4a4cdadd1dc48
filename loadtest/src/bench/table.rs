//! The goal table the benchmark prints: one row per goal (P1-P14) with the
//! crablet figure, the baseline figure measured beside it, their ratio, the goal and
//! whether it was met.
//!
//! Owns formatting only.

use serde::Serialize;

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Goal id (`P1`..`P14`).
    pub id: String,
    /// What was measured.
    pub workload: String,
    /// crablet's figure, formatted.
    pub crablet: String,
    /// The baseline's figure, formatted.
    pub baseline: String,
    /// crablet / baseline (P2: latency ratio), when both exist.
    pub ratio: Option<f64>,
    /// The goal, as docs/performance.md states it.
    pub goal: String,
    /// Whether the goal was met (None: not measured, or the phase failed).
    pub met: Option<bool>,
    /// crablet's raw figure.
    pub crablet_value: Option<f64>,
    /// The baseline's raw figure.
    pub baseline_value: Option<f64>,
}

/// One figure of a row: as the table shows it, and its raw value (the JSON's
/// `crablet_value` or `baseline_value`).
#[derive(Debug, Clone)]
pub struct Figure {
    /// As shown.
    pub text: String,
    /// The raw value.
    pub value: f64,
}

impl Figure {
    /// `value` rounded, with thousands separators, then `unit`: `12,345 events/s`.
    pub fn rate(value: f64, unit: &str) -> Self {
        Self {
            text: format!("{} {unit}", thousands(value)),
            value,
        }
    }
}

impl Row {
    /// crablet's rate beside a baseline's, each a value and its unit (shown as
    /// [`Figure::rate`] shows them), and their ratio (crablet's value over the
    /// baseline's); the goal is stated with [`Row::ratio_at_least`].
    pub fn compared(
        id: &str,
        workload: impl Into<String>,
        (crablet, crablet_unit): (f64, &str),
        (baseline, baseline_unit): (f64, &str),
    ) -> Self {
        let crablet = Figure::rate(crablet, crablet_unit);
        let baseline = Figure::rate(baseline, baseline_unit);
        Self {
            ratio: Some(crablet.value / baseline.value),
            baseline: baseline.text,
            baseline_value: Some(baseline.value),
            ..Self::alone(id, workload, crablet)
        }
    }

    /// crablet's figure with no baseline beside it; the goal is stated with
    /// [`Row::goal`].
    pub fn alone(id: &str, workload: impl Into<String>, crablet: Figure) -> Self {
        Self {
            id: id.into(),
            workload: workload.into(),
            crablet: crablet.text,
            baseline: "-".into(),
            ratio: None,
            goal: String::new(),
            met: None,
            crablet_value: Some(crablet.value),
            baseline_value: None,
        }
    }

    /// The goal as stated, and whether it was met.
    pub fn goal(self, goal: impl Into<String>, met: bool) -> Self {
        Self {
            goal: goal.into(),
            met: Some(met),
            ..self
        }
    }

    /// The goal `>= min` on the ratio (see [`Row::ratio_at_least`]).
    pub fn at_least(self, min: f64, also: bool) -> Self {
        self.ratio_at_least(min, format!(">= {min}"), also)
    }

    /// The goal `>= min x` (a multiple of the baseline) on the ratio.
    pub fn times_at_least(self, min: f64, also: bool) -> Self {
        self.ratio_at_least(min, format!(">= {min}x"), also)
    }

    /// A goal on the ratio: met when it is at least `min` and `also` holds.
    pub fn ratio_at_least(self, min: f64, goal: impl Into<String>, also: bool) -> Self {
        let met = self.ratio.is_some_and(|r| r >= min) && also;
        self.goal(goal, met)
    }

    /// A row for a goal whose phase failed.
    pub fn failed(id: &str, workload: &str, goal: &str, error: &str) -> Self {
        Self {
            id: id.into(),
            workload: workload.into(),
            crablet: format!("error: {}", first_line(error)),
            baseline: String::new(),
            ratio: None,
            goal: goal.into(),
            met: None,
            crablet_value: None,
            baseline_value: None,
        }
    }

    /// A row that shows only a baseline (`--baselines-only`).
    pub fn baseline_only(id: &str, workload: &str, value: f64, unit: &str) -> Self {
        Self {
            id: id.into(),
            workload: workload.into(),
            crablet: "-".into(),
            baseline: format!("{value:.3} {unit}"),
            ratio: None,
            goal: "-".into(),
            met: None,
            crablet_value: None,
            baseline_value: Some(value),
        }
    }
}

fn first_line(s: &str) -> String {
    const MAX_CHARS: usize = 60;
    s.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(MAX_CHARS)
        .collect()
}

/// The table as Markdown with aligned columns.
pub fn render(rows: &[Row]) -> String {
    let header = [
        "goal", "workload", "crablet", "baseline", "ratio", "goal", "met",
    ];
    let cells: Vec<[String; 7]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.workload.clone(),
                r.crablet.clone(),
                r.baseline.clone(),
                r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                r.goal.clone(),
                match r.met {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let padded: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(String::from));
    out.push_str(&line(&widths.map(|w| "-".repeat(w))));
    for row in &cells {
        out.push_str(&line(row));
    }
    out
}

/// `12345.6` as `12,346`.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(16084.6), "16,085");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-1234.0), "-1,234");
    }

    #[test]
    fn compared_rows_carry_both_figures_and_their_ratio() {
        let row = Row::compared("P1", "w", (24_000.4, "events/s"), (16_000.0, "tx/s"))
            .ratio_at_least(1.5, ">= 1.5x", true);
        assert_eq!(
            (row.crablet.as_str(), row.baseline.as_str()),
            ("24,000 events/s", "16,000 tx/s")
        );
        assert_eq!(row.ratio, Some(24_000.4 / 16_000.0));
        assert_eq!(
            (row.crablet_value, row.baseline_value),
            (Some(24_000.4), Some(16_000.0))
        );
        assert_eq!((row.goal.as_str(), row.met), (">= 1.5x", Some(true)));
        let row = Row::compared("P4", "w", (2.0, "r/s"), (1.0, "tx/s"));
        assert_eq!(row.ratio_at_least(1.0, ">= 1x", false).met, Some(false));
        let alone = Row::alone("P9", "w", Figure::rate(5.0, "events/s")).goal(">= 1", true);
        assert_eq!(
            (alone.baseline.as_str(), alone.ratio, alone.baseline_value),
            ("-", None, None)
        );
        assert_eq!(alone.met, Some(true));
    }

    #[test]
    fn the_table_aligns_columns_and_marks_goals() {
        let rows = vec![
            Row {
                id: "P1".into(),
                workload: "w".into(),
                crablet: "24,000 events/s".into(),
                baseline: "16,000 tx/s".into(),
                ratio: Some(1.5),
                goal: ">= 1.5".into(),
                met: Some(true),
                crablet_value: Some(24_000.0),
                baseline_value: Some(16_000.0),
            },
            Row::failed("P4", "read", ">= 1", "server died\nmore"),
        ];
        let t = render(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines
            .iter()
            .all(|l| l.chars().count() == lines[0].chars().count()));
        assert!(lines[2].contains("| 1.50 ") && lines[2].contains("| yes "));
        assert!(lines[3].contains("error: server died") && lines[3].contains("| - "));
    }
}
