//! Timing statistics and the report both load generators print: per-call latency samples with
//! their failures, percentiles and rates ([`Samples`]), latency cells ([`ms`],
//! [`ms_or_micros`]) and the results table ([`Row`], [`print_table`], markdown).

use std::fmt::Display;
use std::time::Duration;

/// `d` in whole microseconds (saturating).
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The calls of one measurement (merged over its callers).
#[derive(Debug, Default)]
pub struct Samples {
    /// Per successful call, in microseconds.
    pub micros: Vec<u64>,
    /// Calls that failed (transport or API error).
    pub failed_calls: u64,
    /// Items that succeeded (SVIDs or entries), where a call carries several.
    pub ok_items: u64,
    /// Items that failed inside a successful call.
    pub failed_items: u64,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Samples {
    /// Adds another caller's samples.
    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.failed_calls += other.failed_calls;
        self.ok_items += other.ok_items;
        self.failed_items += other.failed_items;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Records one successful call that took `took`.
    pub fn push(&mut self, took: Duration) {
        self.micros.push(micros(took));
    }

    /// Keeps `e` if it is the first error seen.
    pub fn error(&mut self, e: impl Display) {
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Counts a failed call, keeping `e` if it is the first error seen.
    pub fn fail(&mut self, e: impl Display) {
        self.failed_calls += 1;
        self.error(e);
    }

    fn percentile_ms(sorted: &[u64], q: f64) -> f64 {
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = (q * sorted.len() as f64).ceil() as usize;
        let i = rank.clamp(1, sorted.len()) - 1;
        sorted[i] as f64 / 1000.0
    }

    /// (p50, p99, max) in milliseconds.
    pub fn latency_ms(&self) -> (f64, f64, f64) {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        (
            Samples::percentile_ms(&sorted, 0.50),
            Samples::percentile_ms(&sorted, 0.99),
            Samples::percentile_ms(&sorted, 1.0),
        )
    }

    /// Successful calls per second over `elapsed`.
    pub fn calls_per_sec(&self, elapsed: Duration) -> f64 {
        self.micros.len() as f64 / elapsed.as_secs_f64()
    }

    /// Successful items per second over `elapsed`.
    pub fn items_per_sec(&self, elapsed: Duration) -> f64 {
        self.ok_items as f64 / elapsed.as_secs_f64()
    }

    /// `"; first error: …"`, or nothing.
    pub fn first_error_note(&self) -> String {
        self.first_error
            .as_ref()
            .map(|e| format!("; first error: {e}"))
            .unwrap_or_default()
    }

    /// `"; N failed, first error: …"`, `"; N failed"`, or nothing.
    pub fn errors_note(&self) -> String {
        match &self.first_error {
            Some(e) => format!("; {} failed, first error: {e}", self.failed_calls),
            None if self.failed_calls > 0 => format!("; {} failed", self.failed_calls),
            None => String::new(),
        }
    }
}

/// A latency in milliseconds as a table cell: `"1.23 ms"`, or `"-"` for none (NaN).
pub fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2} ms")
    }
}

/// Like [`ms`], but below 1 ms in whole microseconds (`"480 µs"`).
pub fn ms_or_micros(v: f64) -> String {
    if v < 1.0 {
        format!("{:.0} µs", v * 1000.0)
    } else {
        ms(v)
    }
}

/// A results table's row.
pub trait Row<const N: usize> {
    /// The column headers.
    const HEADERS: [&'static str; N];
    /// This row's cells.
    fn cells(&self) -> [&str; N];
}

/// Prints a blank line and then `rows` as a markdown table: the header row, the rule, one line a
/// row, each column as wide as its widest cell; the first and last columns (what, notes)
/// left-aligned, the others (numbers) right-aligned.
pub fn print_table<const N: usize, R: Row<N>>(rows: &[R]) {
    let rows: Vec<[&str; N]> = rows.iter().map(R::cells).collect();
    let mut widths: Vec<usize> = R::HEADERS.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str; N]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                let pad = " ".repeat(w.saturating_sub(c.chars().count()));
                if i == 0 || i + 1 == N {
                    format!("{c}{pad}")
                } else {
                    format!("{pad}{c}")
                }
            })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    println!();
    line(&R::HEADERS);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    println!("|-{}-|", rule.join("-|-"));
    for r in &rows {
        line(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_cells() {
        let mut s = Samples::default();
        for us in [3000, 1000, 2000, 500] {
            s.push(Duration::from_micros(us));
        }
        assert_eq!(s.latency_ms(), (1.0, 3.0, 3.0));
        assert_eq!(ms(1.0), "1.00 ms");
        assert_eq!(ms_or_micros(0.5), "500 µs");
        assert_eq!(ms_or_micros(f64::NAN), "-");
        assert!(Samples::default().latency_ms().0.is_nan());
    }

    #[test]
    fn merge_keeps_the_first_error() {
        let mut a = Samples::default();
        a.fail("first");
        let mut b = Samples::default();
        b.fail("second");
        b.ok_items = 2;
        a.merge(b);
        assert_eq!(a.failed_calls, 2);
        assert_eq!(a.ok_items, 2);
        assert_eq!(a.errors_note(), "; 2 failed, first error: first");
        assert_eq!(a.first_error_note(), "; first error: first");
    }
}
