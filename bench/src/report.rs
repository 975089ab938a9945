//! Summaries (median with min-max of per-pair values) and the markdown printed at the end,
//! ready to paste into BENCHMARKS.md.

use std::fmt::Write;
use std::process::Command;

#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(values: &[f64]) -> Summary {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Summary {
        median,
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// `value` with `decimals` decimals, and a thousands separator for large numbers.
pub fn num(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return "n/a".into();
    }
    let text = format!("{value:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), ""), |(i, f)| (i, f));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

pub fn cell(s: Summary, decimals: usize) -> String {
    format!(
        "{} ({} – {})",
        num(s.median, decimals),
        num(s.min, decimals),
        num(s.max, decimals)
    )
}

/// Table rows from a label and the cells that follow it.
pub fn labelled<'a>(rows: impl IntoIterator<Item = (&'a str, Vec<String>)>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|(label, cells)| [vec![label.to_owned()], cells].concat())
        .collect()
}

/// A markdown table: header cells, then rows of cells.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        header.iter().map(|_| "---|").collect::<String>()
    );
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// Machine, tools, commit and the exact command, as a markdown list.
pub fn environment(gateway_bin: Option<&str>) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, m)| m.trim().to_owned());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    // NEXUS_BENCH_COMMIT: for a build from an exported tree (`git archive`) without .git.
    let commit = std::env::var("NEXUS_BENCH_COMMIT").unwrap_or_else(|_| {
        let mut commit = command_line("git", &["rev-parse", "--short", "HEAD"]);
        if !command_line("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty() {
            commit.push_str(" + uncommitted changes");
        }
        commit
    });
    let argv: Vec<String> = std::env::args().collect();
    let mut out = String::new();
    let _ = writeln!(out, "- CPU: {model}, {cores} cores");
    let _ = writeln!(out, "- kernel: {}", command_line("uname", &["-r"]));
    let _ = writeln!(out, "- rustc: {}", command_line("rustc", &["--version"]));
    let _ = writeln!(
        out,
        "- rustls {} (ring), hyper {}, tokio {} (from Cargo.lock)",
        locked("rustls"),
        locked("hyper"),
        locked("tokio")
    );
    let _ = writeln!(out, "- commit: {commit}");
    if let Some(bin) = gateway_bin {
        let _ = writeln!(
            out,
            "- gateway: {bin} `serve` on core 0 (`taskset -c 0`), TOKIO_WORKER_THREADS=1, \
             inbound rate limits raised to 1,000,000/s (the limiters still run)"
        );
    }
    let log = std::env::var("RUST_LOG").unwrap_or_else(|_| "unset (gateway default: info)".into());
    let _ = writeln!(out, "- RUST_LOG: {log}");
    let affinity = crate::procs::own_affinity();
    let _ = writeln!(out, "- load generator affinity: cores {affinity}");
    let pinned = if affinity == "1" { "taskset -c 1 " } else { "" };
    let _ = writeln!(out, "- command: `{pinned}{}`", shell_words(&argv));
    out
}

/// The version of a crate in the workspace's Cargo.lock (first match).
fn locked(name: &str) -> String {
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    let needle = format!("name = \"{name}\"\nversion = \"");
    lock.find(&needle)
        .map(|i| &lock[i + needle.len()..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("?")
        .to_owned()
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range() {
        let s = summarize(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[1.0, 2.0, 4.0, 8.0]).median, 3.0);
        assert!(summarize(&[]).median.is_nan());
    }

    #[test]
    fn numbers() {
        assert_eq!(num(1234567.891, 1), "1,234,567.9");
        assert_eq!(num(-1234.0, 0), "-1,234");
        assert_eq!(num(0.456, 2), "0.46");
        assert_eq!(num(f64::NAN, 2), "n/a");
    }
}
