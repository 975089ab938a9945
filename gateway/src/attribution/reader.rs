//! Reading segments, also while the gateway writes them (from the HTTP endpoint or the CLI).

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::record::line_seq;
use super::{AttributionError, Record};

/// `<dir>/segment-<first seq, 20 digits>.jsonl`: zero-padded so names sort like seqs.
pub(super) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("segment-{first_seq:020}.jsonl"))
}

/// The segments in `dir` as (first seq, path), oldest first.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, AttributionError> {
    let entries = std::fs::read_dir(dir).map_err(|e| AttributionError::io(dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AttributionError::io(dir, e))?;
        let name = entry.file_name();
        let first = name
            .to_str()
            .and_then(|n| n.strip_prefix("segment-")?.strip_suffix(".jsonl"))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<u64>().ok());
        if let Some(first) = first {
            segments.push((first, entry.path()));
        }
    }
    segments.sort_unstable();
    Ok(segments)
}

/// Raw JSON lines (without `'\n'`) of the records with seq > `after`, at most `limit`, in seq
/// order. Blocking file IO: call it from `spawn_blocking` in async code.
pub fn read_after(dir: &Path, after: u64, limit: usize) -> Result<Vec<String>, AttributionError> {
    let mut out = Vec::new();
    scan(dir, after, limit, |line, _| out.push(line.to_owned()))?;
    Ok(out)
}

/// The seq to read after to see every record written at or after `since`: segments last
/// modified before `since` hold only older records and are skipped whole. `None` when every
/// segment is older. Blocking file IO.
pub fn seq_before(dir: &Path, since: SystemTime) -> Result<Option<u64>, AttributionError> {
    for (first, path) in list_segments(dir)? {
        match std::fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(modified) if modified < since => continue,
            // Deleted by retention meanwhile: older still.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            _ => return Ok(Some(first.saturating_sub(1))),
        }
    }
    Ok(None)
}

/// Like [`read_after`], parsed.
pub fn read_records(dir: &Path, after: u64, limit: usize) -> Result<Vec<Record>, AttributionError> {
    let mut out = Vec::new();
    scan(dir, after, limit, |_, record| out.push(record))?;
    Ok(out)
}

/// Calls `visit` for each valid record with seq > `after`, at most `limit`. Stops at an
/// unterminated line (being written right now, or torn): nothing after it exists yet, and
/// stopping keeps the output gap-free. A complete but unparsable line in the middle (left by a
/// failed write) is skipped. A segment deleted by retention between listing and opening is
/// skipped; consumers see that as a jump in seq.
fn scan(
    dir: &Path,
    after: u64,
    limit: usize,
    mut visit: impl FnMut(&str, Record),
) -> Result<(), AttributionError> {
    if limit == 0 {
        return Ok(());
    }
    let segments = list_segments(dir)?;
    // Segment i holds seqs [first_i, first_i+1): start at the last one that can hold after+1.
    let start = segments
        .iter()
        .rposition(|(first, _)| *first <= after.saturating_add(1))
        .unwrap_or(0);
    let mut seen = 0;
    let mut line = Vec::new();
    for (_, path) in &segments[start..] {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(AttributionError::io(path, e)),
        };
        let mut reader = BufReader::with_capacity(256 << 10, file);
        loop {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| AttributionError::io(path, e))?;
            if n == 0 {
                break;
            }
            if line.pop() != Some(b'\n') {
                return Ok(());
            }
            // Skip old lines without a full parse; they are most of a segment when tailing.
            if line_seq(&line).is_some_and(|seq| seq <= after) {
                continue;
            }
            let Ok(text) = std::str::from_utf8(&line) else {
                continue;
            };
            let Ok(record) = serde_json::from_str::<Record>(text) else {
                tracing::warn!(path = %path.display(), "skipping unparsable attribution line");
                continue;
            };
            if record.seq <= after {
                continue;
            }
            visit(text, record);
            seen += 1;
            if seen >= limit {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(seq: u64) -> String {
        format!(
            "{{\"seq\":{seq},\"id\":\"i\",\"time\":\"t\",\"kind\":\"start\",\"outcome\":\"started\",\"status\":201,\"request_bytes\":0,\"response_bytes\":0,\"latency_us\":0,\"billable\":1}}\n"
        )
    }

    fn write_segment(dir: &Path, first: u64, content: &str) {
        let mut f = File::create(segment_path(dir, first)).unwrap();
        f.write_all(content.as_bytes()).unwrap();
    }

    fn seqs(dir: &Path, after: u64, limit: usize) -> Vec<u64> {
        read_records(dir, after, limit)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect()
    }

    #[test]
    fn segments_older_than_a_time_are_skipped_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_segment(dir, 1, &(1..=3).map(line).collect::<String>());
        write_segment(dir, 4, &(4..=6).map(line).collect::<String>());
        let old = SystemTime::now() - std::time::Duration::from_secs(3 * 3600);
        File::options()
            .write(true)
            .open(segment_path(dir, 1))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let an_hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        assert_eq!(seq_before(dir, an_hour_ago).unwrap(), Some(3));
        assert_eq!(seq_before(dir, old).unwrap(), Some(0));
        let future = SystemTime::now() + std::time::Duration::from_secs(3600);
        assert_eq!(seq_before(dir, future).unwrap(), None);
    }

    #[test]
    fn after_and_limit_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        write_segment(dir, 1, &(1..=3).map(line).collect::<String>());
        write_segment(dir, 4, &(4..=6).map(line).collect::<String>());
        write_segment(dir, 7, &(7..=9).map(line).collect::<String>());
        std::fs::write(dir.join("notes.txt"), "not a segment").unwrap();
        assert_eq!(seqs(dir, 0, 100), (1..=9).collect::<Vec<_>>());
        assert_eq!(seqs(dir, 2, 3), vec![3, 4, 5]);
        assert_eq!(seqs(dir, 6, 100), vec![7, 8, 9]);
        assert_eq!(seqs(dir, 9, 100), Vec::<u64>::new());
        assert_eq!(seqs(dir, 0, 0), Vec::<u64>::new());
        let raw = read_after(dir, 4, 1).unwrap();
        assert_eq!(raw, vec![line(5).trim_end().to_owned()]);
    }

    #[test]
    fn torn_tail_stops_and_bad_middle_line_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let content = format!(
            "{}{{\"seq\":2,\"id\n{}{}",
            line(1),
            line(3),
            r#"{"seq":4,"i"#
        );
        write_segment(dir, 1, &content);
        assert_eq!(seqs(dir, 0, 100), vec![1, 3]);
    }

    #[test]
    fn missing_dir_is_an_io_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = read_after(&tmp.path().join("nope"), 0, 1).unwrap_err();
        assert!(matches!(err, AttributionError::Io { .. }), "{err}");
    }
}
