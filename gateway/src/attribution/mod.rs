//! Attribution log: one [`Record`] per Nexus start, cancel and completion that crosses the
//! gateway, rejected ones included. Metering bills namespaces from it ([`usage`]), so a lost,
//! duplicated or misattributed record is a billing error.
//!
//! # Format
//!
//! Append-only JSON lines in `<dir>/segment-<first seq, 20 digits>.jsonl`, one object per line,
//! each line ending in `'\n'`, `seq` first. `seq` is assigned by the log: strictly increasing and
//! without gaps, across segments and restarts. A segment is closed when it exceeds
//! `segment_max_bytes` or `segment_max_age` (checked when a batch is written); after each rotation
//! the oldest closed segments beyond the retention limits are deleted (never the active one), so
//! metering must have read them by then. On open, a torn tail of the newest segment (an
//! unterminated or unparsable last line, from a crash mid-write) is cut and numbering continues
//! after the last good record.
//!
//! # Durability
//!
//! Concurrent appends are batched: one `write` per batch. In `Written` mode the first appender
//! to find nobody writing writes the batch itself (a page-cache write, cheaper than a thread
//! handoff); `Strict` and `Async` batches, the periodic fsync and retries run on one dedicated
//! OS thread, so no async worker waits for the disk to sync.
//!
//! | [`Durability`] | `append` returns | `kill -9` loses | machine crash loses |
//! |---|---|---|---|
//! | `Written` (default) | after the batch is written to the OS | nothing answered | at most `fsync_interval` |
//! | `Strict` | after the batch is written and fdatasync'ed (group commit) | nothing answered | nothing answered |
//! | `Async` | once queued | what was still queued | queued + `fsync_interval` |
//!
//! A seq belongs to the record that is on disk: a seq handed out for a record that was then lost
//! (`Async`, or an error answer followed by a crash, or anything after the last fsync on a
//! machine crash) is given to the next record after restart; a consumer reading right at the head
//! can tell by `id`.
//!
//! If a write fails (disk full), the appenders in that batch get [`AttributionError::Io`] but
//! their records stay queued and are retried in seq order, so none is skipped or written twice;
//! while the disk keeps failing and the backlog is full, new appends are refused
//! ([`AttributionError::Backlog`]) without taking a seq.
//!
//! Only one process may write a directory at a time (nothing enforces it); any number may read
//! it with [`read_after`] / [`read_records`] while it is written.

mod reader;
mod record;
pub mod usage;
mod writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

pub use reader::{read_after, read_records, seq_before};
pub use record::{Kind, Outcome, Record};
pub use usage::{Dimension, UsageRow, aggregate, format_csv, format_table};
pub use writer::AttributionLog;

/// When [`AttributionLog::append`] returns, and so what a crash can lose (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Default: answered only after the record is written to the OS (one write per batch);
    /// fsync every `fsync_interval`. A process crash loses nothing answered; a machine crash at
    /// most `fsync_interval` of records.
    Written,
    /// fdatasync (group commit: one per batch) before answering. Loses nothing answered.
    Strict,
    /// Answer once queued, write in the background. A crash may lose the last records.
    Async,
}

impl FromStr for Durability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "written" => Ok(Self::Written),
            "strict" => Ok(Self::Strict),
            "async" => Ok(Self::Async),
            other => Err(format!(
                "unknown durability {other:?} (expected written, strict or async)"
            )),
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Written => "written",
            Self::Strict => "strict",
            Self::Async => "async",
        })
    }
}

#[derive(Debug, Clone)]
pub struct AttributionSettings {
    /// Directory holding the segment files (created if missing).
    pub dir: PathBuf,
    /// Written into every record when set: the replica's id, when several share a store.
    pub replica: Option<String>,
    /// Default [`Durability::Written`].
    pub durability: Durability,
    /// How often written-but-unsynced data is fsync'ed in `Written` and `Async` modes; bounds
    /// the loss on a machine crash. Default 100 ms.
    pub fsync_interval: Duration,
    /// Close the active segment once it holds at least this many bytes. Default 64 MiB.
    pub segment_max_bytes: u64,
    /// Close the active segment once it is this old. Default 1 hour.
    pub segment_max_age: Duration,
    /// Delete closed segments last modified longer ago than this. Default 30 days.
    pub retention_max_age: Option<Duration>,
    /// Delete the oldest closed segments while all segments together exceed this. Default 10 GiB.
    pub retention_max_bytes: Option<u64>,
}

impl AttributionSettings {
    /// Settings for `dir` with every other field at its documented default.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            replica: None,
            durability: Durability::Written,
            fsync_interval: Duration::from_millis(100),
            segment_max_bytes: 64 << 20,
            segment_max_age: Duration::from_secs(3600),
            retention_max_age: Some(Duration::from_secs(30 * 24 * 3600)),
            retention_max_bytes: Some(10 << 30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    /// A file operation failed. From `append`: the record was not written yet; it stays queued
    /// and is retried, so it lands on disk once the disk recovers unless the process exits first.
    #[error("attribution log {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The disk keeps failing and too many records wait for it; this record got no seq.
    #[error("attribution log backlog full ({0} records wait for a failing disk)")]
    Backlog(usize),
    /// The writer thread is gone (log dropped or writer panicked).
    #[error("attribution log closed")]
    Closed,
}

impl AttributionError {
    fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// End-to-end tests of the log: real files in temp dirs, bounded waits.
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::path::Path;
    use std::process::{Command, Stdio};
    use std::task::Poll;
    use std::time::{Instant, SystemTime};

    fn settings(dir: &Path, durability: Durability) -> AttributionSettings {
        AttributionSettings {
            durability,
            ..AttributionSettings::new(dir.to_owned())
        }
    }

    fn open(dir: &Path) -> AttributionLog {
        AttributionLog::open(settings(dir, Durability::Written)).unwrap()
    }

    fn start() -> Record {
        Record {
            kind: Kind::Start,
            caller_namespace: Some("orders".into()),
            endpoint: Some("pay".into()),
            outcome: Outcome::Started,
            status: 201,
            billable: 1,
            ..Record::default()
        }
    }

    /// Seqs on disk; also checks every segment is whole '\n'-terminated records.
    fn disk_seqs(dir: &Path) -> Vec<u64> {
        for (_, path) in reader::list_segments(dir).unwrap() {
            let content = std::fs::read_to_string(&path).unwrap();
            assert!(content.is_empty() || content.ends_with('\n'), "{path:?}");
            for line in content.lines() {
                serde_json::from_str::<Record>(line).unwrap();
            }
        }
        let records = read_records(dir, 0, usize::MAX).unwrap();
        records.iter().map(|r| r.seq).collect()
    }

    fn segment_firsts(dir: &Path) -> Vec<u64> {
        let segments = reader::list_segments(dir).unwrap();
        segments.into_iter().map(|(first, _)| first).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_get_gapless_seqs_in_every_mode() {
        for durability in [Durability::Written, Durability::Strict, Durability::Async] {
            let tmp = tempfile::tempdir().unwrap();
            let log = AttributionLog::open(settings(tmp.path(), durability)).unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..32 {
                let log = log.clone();
                tasks.spawn(async move {
                    let mut seqs = Vec::new();
                    for _ in 0..50 {
                        seqs.push(log.append(start()).await.unwrap());
                    }
                    seqs
                });
            }
            let mut seqs: Vec<u64> = tasks.join_all().await.concat();
            seqs.sort_unstable();
            assert_eq!(seqs, (1..=1600).collect::<Vec<_>>(), "{durability}");
            log.flush().await.unwrap();
            assert_eq!(log.last_seq(), 1600);
            assert_eq!(disk_seqs(tmp.path()), seqs, "{durability}");
        }
    }

    #[tokio::test]
    async fn written_and_strict_are_in_the_file_when_append_returns() {
        for durability in [Durability::Written, Durability::Strict] {
            let tmp = tempfile::tempdir().unwrap();
            let log = AttributionLog::open(settings(tmp.path(), durability)).unwrap();
            for expected in 1..=5 {
                let seq = log.append(start()).await.unwrap();
                assert_eq!(seq, expected);
                let path = reader::segment_path(tmp.path(), 1);
                let content = std::fs::read_to_string(path).unwrap();
                let last: Record = serde_json::from_str(content.lines().last().unwrap()).unwrap();
                assert_eq!(last.seq, seq, "{durability}");
                assert_eq!(log.last_seq(), seq);
            }
        }
    }

    #[tokio::test]
    async fn async_returns_seqs_and_flush_writes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AttributionLog::open(settings(tmp.path(), Durability::Async)).unwrap();
        for expected in 1..=100 {
            assert_eq!(log.append(start()).await.unwrap(), expected);
        }
        log.flush().await.unwrap();
        assert_eq!(disk_seqs(tmp.path()), (1..=100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn assigns_id_and_time_and_keeps_given_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path());
        // Written in milliseconds, truncated.
        let before = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap();
        let before = SystemTime::UNIX_EPOCH + Duration::from_millis(before.as_millis() as u64);
        log.append(start()).await.unwrap();
        let after = SystemTime::now();
        let given = Record {
            id: "given".into(),
            time: "2026-11-23T01:00:00.000Z".into(),
            ..start()
        };
        log.append(given).await.unwrap();
        let records = read_records(tmp.path(), 0, 10).unwrap();
        uuid::Uuid::parse_str(&records[0].id).unwrap();
        let time = humantime::parse_rfc3339(&records[0].time).unwrap();
        assert!(
            before <= time && time <= after,
            "{time:?} not during the append"
        );
        assert_eq!(records[0].time.len(), "2026-11-23T01:00:00.000Z".len());
        assert_eq!(records[1].id, "given");
        assert_eq!(records[1].time, "2026-11-23T01:00:00.000Z");
    }

    #[tokio::test]
    async fn restart_continues_numbering() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path());
        for _ in 0..3 {
            log.append(start()).await.unwrap();
        }
        drop(log);
        let log = open(tmp.path());
        assert_eq!(log.last_seq(), 3);
        assert_eq!(log.append(start()).await.unwrap(), 4);
        assert_eq!(disk_seqs(tmp.path()), [1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn torn_last_line_is_cut_on_open() {
        let torn_tails = [
            "{\"seq\":4,\"id\":\"ab",   // unterminated
            "not json\n",               // terminated but not a record
            "\0\0\0\0\n\0\0",           // zero-filled block after a machine crash
            "not json\n{\"seq\":4,\"i", // several bad lines
        ];
        for torn in torn_tails {
            let tmp = tempfile::tempdir().unwrap();
            let log = open(tmp.path());
            for _ in 0..3 {
                log.append(start()).await.unwrap();
            }
            drop(log);
            let path = reader::segment_path(tmp.path(), 1);
            let good = std::fs::read(&path).unwrap();
            let mut content = good.clone();
            content.extend_from_slice(torn.as_bytes());
            std::fs::write(&path, content).unwrap();
            let log = open(tmp.path());
            let cut = std::fs::read_to_string(&path).unwrap();
            assert_eq!(cut, String::from_utf8(good).unwrap(), "{torn:?}");
            assert_eq!(log.last_seq(), 3);
            assert_eq!(log.append(start()).await.unwrap(), 4);
            assert_eq!(disk_seqs(tmp.path()), [1, 2, 3, 4]);
        }
    }

    #[tokio::test]
    async fn rotates_by_size_and_reads_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AttributionLog::open(AttributionSettings {
            segment_max_bytes: 1,
            ..settings(tmp.path(), Durability::Written)
        })
        .unwrap();
        for _ in 0..10 {
            log.append(start()).await.unwrap();
        }
        assert_eq!(segment_firsts(tmp.path()), (1..=10).collect::<Vec<_>>());
        let lines = read_after(tmp.path(), 3, 4).unwrap();
        let seqs: Vec<u64> = lines
            .iter()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [4, 5, 6, 7]);
        assert!(lines.iter().all(|l| !l.ends_with('\n')));
        drop(log);
        // After a restart the full newest segment is closed on the next batch.
        let log = AttributionLog::open(AttributionSettings {
            segment_max_bytes: 1,
            ..settings(tmp.path(), Durability::Written)
        })
        .unwrap();
        log.append(start()).await.unwrap();
        assert_eq!(segment_firsts(tmp.path()), (1..=11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn rotates_by_age() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AttributionLog::open(AttributionSettings {
            segment_max_age: Duration::ZERO,
            ..settings(tmp.path(), Durability::Written)
        })
        .unwrap();
        for _ in 0..3 {
            log.append(start()).await.unwrap();
        }
        assert_eq!(segment_firsts(tmp.path()), [1, 2, 3]);
    }

    #[tokio::test]
    async fn retention_by_size_deletes_oldest_never_active() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let base = AttributionSettings {
            segment_max_bytes: 1,
            retention_max_age: None,
            ..settings(dir, Durability::Written)
        };
        let log = AttributionLog::open(base.clone()).unwrap();
        log.append(start()).await.unwrap();
        // Seqs 1..=9 have lines of equal length.
        let line_len = std::fs::metadata(reader::segment_path(dir, 1))
            .unwrap()
            .len();
        drop(log);
        let log = AttributionLog::open(AttributionSettings {
            retention_max_bytes: Some(3 * line_len),
            ..base.clone()
        })
        .unwrap();
        for _ in 2..=8 {
            log.append(start()).await.unwrap();
        }
        // Checked at each rotation, with the new segment still empty: 3 closed ones fit.
        assert_eq!(segment_firsts(dir), [5, 6, 7, 8]);
        assert_eq!(disk_seqs(dir), [5, 6, 7, 8]);
        drop(log);
        let log = AttributionLog::open(AttributionSettings {
            retention_max_bytes: Some(0),
            ..base
        })
        .unwrap();
        log.append(start()).await.unwrap();
        assert_eq!(segment_firsts(dir), [9], "the active segment is kept");
    }

    #[tokio::test]
    async fn retention_by_age_deletes_old_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let settings = AttributionSettings {
            segment_max_bytes: 1,
            retention_max_age: Some(Duration::from_secs(24 * 3600)),
            ..settings(dir, Durability::Written)
        };
        let log = AttributionLog::open(settings.clone()).unwrap();
        for _ in 0..3 {
            log.append(start()).await.unwrap();
        }
        drop(log);
        let old = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        let file = std::fs::File::options()
            .write(true)
            .open(reader::segment_path(dir, 1))
            .unwrap();
        file.set_modified(old).unwrap();
        let log = AttributionLog::open(settings).unwrap();
        log.append(start()).await.unwrap();
        assert_eq!(segment_firsts(dir), [2, 3, 4]);
    }

    #[tokio::test]
    async fn wait_after_wakes_on_append_and_times_out() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path());
        // Polled once before the append: it is waiting on seq 0 then.
        let waiting = log.wait_after(0, Duration::from_secs(30));
        tokio::pin!(waiting);
        let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
        assert_eq!(first, Poll::Pending, "nothing written yet");
        log.append(start()).await.unwrap();
        let woke = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(woke.unwrap(), 1);

        // Timing on a paused clock: a record already there is returned at once, and a wait
        // with nothing new lasts exactly its timeout.
        tokio::time::pause();
        let started = tokio::time::Instant::now();
        assert_eq!(log.wait_after(0, Duration::from_secs(30)).await, 1);
        assert_eq!(started.elapsed(), Duration::ZERO, "already there");
        assert_eq!(log.wait_after(1, Duration::from_secs(30)).await, 1);
        assert_eq!(started.elapsed().as_secs(), 30, "timed out");
    }

    /// A leader waits one scheduler turn so that appends ready in the same turn share its
    /// write. Dropped during that turn (a caller gone), it still writes what is queued and
    /// gives up the lead.
    #[tokio::test]
    async fn a_leader_dropped_while_waiting_its_turn_writes_and_gives_up_the_lead() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path());
        let leader = log.append(start());
        let follower = log.append(start());
        tokio::pin!(leader, follower);
        let first = std::future::poll_fn(|cx| Poll::Ready(leader.as_mut().poll(cx))).await;
        assert!(first.is_pending(), "the leader waits a turn first");
        let second = std::future::poll_fn(|cx| Poll::Ready(follower.as_mut().poll(cx))).await;
        assert!(
            second.is_pending(),
            "the follower waits for the leader's write"
        );
        assert_eq!(log.last_seq(), 0, "nothing written yet");

        leader.set(log.append(start()));
        assert_eq!(
            disk_seqs(tmp.path()),
            [1, 2],
            "written on drop, in one batch"
        );
        let answered = tokio::time::timeout(Duration::from_secs(5), follower).await;
        assert_eq!(answered.unwrap().unwrap(), 2);
        assert_eq!(leader.await.unwrap(), 3, "the lead was given up");
        assert_eq!(disk_seqs(tmp.path()), [1, 2, 3]);

        // Many appends ready in one turn: every one answered, every record on disk once.
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..40 {
            let log = log.clone();
            tasks.spawn(async move { log.append(start()).await.unwrap() });
        }
        let mut seqs = tasks.join_all().await;
        seqs.sort_unstable();
        assert_eq!(seqs, (4..=43).collect::<Vec<_>>());
        assert_eq!(disk_seqs(tmp.path()), (1..=43).collect::<Vec<_>>());
    }

    #[test]
    fn settings_and_durability_parse() {
        let s = AttributionSettings::new("d".into());
        assert_eq!(s.durability, Durability::Written);
        assert_eq!(s.fsync_interval, Duration::from_millis(100));
        assert_eq!(s.segment_max_bytes, 64 << 20);
        assert_eq!("strict".parse::<Durability>(), Ok(Durability::Strict));
        assert_eq!("async".parse::<Durability>(), Ok(Durability::Async));
        assert!("fast".parse::<Durability>().is_err());
    }

    const CRASH_CHILD: &str = "NEXUS_ATTRIBUTION_CRASH_CHILD";
    const CRASH_TEST: &str = "attribution::tests::kill_9_loses_no_acknowledged_record";

    /// Re-runs this test binary as a child that appends and prints each acknowledged seq,
    /// SIGKILLs it, and checks every acknowledged seq is on disk with no gap.
    #[test]
    fn kill_9_loses_no_acknowledged_record() {
        if let Ok(spec) = std::env::var(CRASH_CHILD) {
            return crash_child(&spec);
        }
        for durability in ["written", "strict"] {
            let tmp = tempfile::tempdir().unwrap();
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", CRASH_TEST, "--nocapture", "--test-threads=1"])
                .env(
                    CRASH_CHILD,
                    format!("{durability}:{}", tmp.path().display()),
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            let reader = std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if let Some(seq) = line.strip_prefix("ACK ") {
                        let _ = tx.send(seq.parse::<u64>().unwrap());
                    }
                }
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut acked = Vec::new();
            while acked.len() < 500 {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(seq) => acked.push(seq),
                    Err(_) => {
                        let _ = child.kill();
                        panic!("child acknowledged only {} records", acked.len());
                    }
                }
            }
            child.kill().unwrap();
            child.wait().unwrap();
            reader.join().unwrap();
            acked.extend(rx.try_iter());

            let log = open(tmp.path());
            let on_disk = disk_seqs(tmp.path());
            let last = on_disk.len() as u64;
            assert_eq!(on_disk, (1..=last).collect::<Vec<_>>(), "{durability}");
            let max_acked = acked.iter().copied().max().unwrap();
            assert!(
                max_acked <= last,
                "{durability}: acked {max_acked}, on disk {last}"
            );
            assert_eq!(log.last_seq(), last);
            let next = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(log.append(start()))
                .unwrap();
            assert_eq!(next, last + 1);
        }
    }

    fn crash_child(spec: &str) {
        let (durability, dir) = spec.split_once(':').unwrap();
        let settings = settings(Path::new(dir), durability.parse().unwrap());
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let log = AttributionLog::open(settings).unwrap();
            println!(); // the harness has printed "test … " without a newline
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let log = log.clone();
                tasks.spawn(async move {
                    // Bounded in case the parent dies without killing us.
                    let until = Instant::now() + Duration::from_secs(120);
                    while Instant::now() < until {
                        let seq = log.append(start()).await.unwrap();
                        println!("ACK {seq}");
                    }
                });
            }
            tasks.join_all().await;
        });
    }
}
