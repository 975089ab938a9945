//! [`AttributionLog`]: assigns seqs under a small mutex and writes records in batches.
//!
//! In the default `Written` mode the appender that finds nobody writing becomes the batch's
//! leader and writes everything queued itself (one `write` to the page cache), answering the
//! others in the batch: no thread handoff on the request path. Under load the leader first
//! waits one scheduler turn, so the requests ready in that turn share its write. `Strict` (an fdatasync per batch)
//! and `Async` hand batches to one writer thread, which also does the periodic fsync (outside
//! the lock), retries failed writes and flushes on shutdown.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use super::reader::{list_segments, segment_path};
use super::{AttributionError, AttributionSettings, Durability, Record};

/// Records that may wait for a failing disk before appends are refused.
const MAX_BACKLOG: usize = 65_536;
/// `Async` appends wait for the writer beyond this many queued records (backpressure).
const ASYNC_MAX_QUEUED: usize = 65_536;
/// How much of the newest segment's tail open() reads to find the last good line.
const TAIL_CHUNK: u64 = 1 << 20;
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);
/// After a lead that waited a turn and gathered no other record, this many leads write at
/// once: waiting costs a scheduler turn (about 4,000 instructions with the poll of the
/// reactor it brings), worth it only when it saves writes.
const QUIET_LEADS: usize = 63;
/// The writer thread looks at least this often for a due fsync or retry.
const MAX_IDLE: Duration = Duration::from_millis(100);

type Ack = oneshot::Sender<Result<(), AttributionError>>;

struct Pending {
    record: Record,
    /// None once answered (Async, or told about a failed write and kept for retry).
    ack: Option<Ack>,
}

#[derive(Default)]
struct Queue {
    next_seq: u64,
    records: Vec<Pending>,
    flushes: Vec<Ack>,
    /// An appender is writing batches inline (`Written` mode); later appenders leave their
    /// records to it.
    leading: bool,
    closing: bool,
    /// The writer thread has exited.
    dead: bool,
}

struct Shared {
    /// Lock order: `files` before `queue`.
    queue: Mutex<Queue>,
    files: Mutex<Files>,
    wake: Condvar,
    /// Appenders write batches themselves (`Written`); otherwise the writer thread does.
    inline: bool,
    /// Last seq written to the OS.
    written: watch::Sender<u64>,
    /// Records kept for retry after a failed write (non-zero: the disk is failing).
    retained: AtomicUsize,
    /// Leads left to write at once, without waiting a turn for others: set when waiting
    /// gathered nobody (a quiet gateway), so that waiting costs only under load.
    write_at_once: AtomicUsize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.queue)
    }

    /// Writes queued batches until the queue is empty, as the leader. Leaves the queue to the
    /// writer thread while the disk is failing (it retries in seq order). Returns how many
    /// records the first batch held.
    fn lead(&self) -> usize {
        let mut files = lock(&self.files);
        let mut first = None;
        loop {
            let mut q = self.lock();
            if q.records.is_empty() || !files.pending.is_empty() || q.closing {
                q.leading = false;
                if !q.records.is_empty() {
                    self.wake.notify_one();
                }
                return first.unwrap_or(0);
            }
            first.get_or_insert(q.records.len());
            files.pending.append(&mut q.records);
            drop(q);
            files.write_pending(self);
        }
    }
}

/// The lead of an inline batch, given up (after writing what is queued) when dropped.
struct Lead<'a>(&'a Shared);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if self.0.lead() <= 1 {
            self.0.write_at_once.store(QUIET_LEADS, Ordering::Relaxed);
        }
    }
}

/// The attribution log of one gateway process. Clones share one writer.
#[derive(Clone)]
pub struct AttributionLog {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    durability: Durability,
    replica: Option<String>,
    dir: PathBuf,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Inner {
    /// The last handle writes and fsyncs what is queued before the writer exits.
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for AttributionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttributionLog")
            .field("dir", &self.inner.dir)
            .field("durability", &self.inner.durability)
            .field("last_seq", &self.last_seq())
            .finish()
    }
}

impl AttributionLog {
    /// Opens (creating) the log dir; cuts a torn last line (unterminated, or not valid JSON) off
    /// the newest segment, and continues numbering after the last good seq. Starts one dedicated
    /// OS writer thread for fsyncs, retries and the non-inline modes.
    pub fn open(settings: AttributionSettings) -> Result<AttributionLog, AttributionError> {
        let dir = settings.dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| AttributionError::io(&dir, e))?;
        let (active, last_seq) = match list_segments(&dir)?.pop() {
            Some((first, path)) => {
                let (active, last) = Active::recover(first, path)?;
                (Some(active), last)
            }
            None => (None, 0),
        };
        let durability = settings.durability;
        let replica = settings.replica.clone();
        let files = Files {
            settings,
            active,
            pending: Vec::new(),
            buf: Vec::new(),
            ends: Vec::new(),
            unterminated: false,
            dirty: false,
            last_sync: Instant::now(),
            retry_delay: Duration::ZERO,
            retry_at: Instant::now(),
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_seq: last_seq + 1,
                ..Queue::default()
            }),
            files: Mutex::new(files),
            wake: Condvar::new(),
            inline: durability == Durability::Written,
            written: watch::Sender::new(last_seq),
            retained: AtomicUsize::new(0),
            write_at_once: AtomicUsize::new(0),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("attribution-writer".into())
            .spawn(move || run_writer(thread_shared))
            .map_err(|e| AttributionError::io(&dir, e))?;
        Ok(AttributionLog {
            inner: Arc::new(Inner {
                shared,
                durability,
                replica,
                dir,
                thread: Some(thread),
            }),
        })
    }

    /// Assigns seq (and id/time if empty) and returns it once the record is as durable as the
    /// configured [`Durability`] says. Concurrent appends are batched into one write (and, in
    /// `Strict`, one fdatasync). Seq is assigned under the same lock that enqueues, and batches
    /// are written under one lock in queue order, so the order on disk is seq order. Dropping
    /// the future after it started does not withdraw the record.
    pub async fn append(&self, mut record: Record) -> Result<u64, AttributionError> {
        if record.id.is_empty() {
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            record.id = uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut text)
                .to_owned();
        }
        record.replica.clone_from(&self.inner.replica);
        let shared = &self.inner.shared;
        let (tx, rx) = oneshot::channel();
        let (seq, wait, lead) = {
            let mut q = shared.lock();
            if q.dead {
                return Err(AttributionError::Closed);
            }
            let retained = shared.retained.load(Ordering::Relaxed);
            if retained > 0 && retained + q.records.len() >= MAX_BACKLOG {
                return Err(AttributionError::Backlog(retained + q.records.len()));
            }
            let seq = q.next_seq;
            q.next_seq += 1;
            record.seq = seq;
            if record.time.is_empty() {
                record.time = rfc3339_millis(SystemTime::now());
            }
            let wait =
                self.inner.durability != Durability::Async || q.records.len() >= ASYNC_MAX_QUEUED;
            let lead = shared.inline && !q.leading && !q.closing;
            if lead {
                q.leading = true;
            } else if !shared.inline && q.records.is_empty() && q.flushes.is_empty() {
                // The writer thread only sleeps on an empty queue: the first record wakes it.
                shared.wake.notify_one();
            }
            q.records.push(Pending {
                record,
                ack: wait.then_some(tx),
            });
            (seq, wait, lead)
        };
        if lead {
            // A write to the page cache: cheaper than waking a thread and being woken back.
            // It waits for one turn of the scheduler first, so that the other requests ready
            // now append theirs and one write carries them all. The guard writes on drop, so
            // a dropped future cannot leave the lead taken.
            let at_once = shared.write_at_once.load(Ordering::Relaxed);
            if at_once > 0 {
                shared.write_at_once.store(at_once - 1, Ordering::Relaxed);
                shared.lead();
            } else {
                let lead = Lead(shared);
                tokio::task::yield_now().await;
                drop(lead);
            }
        }
        if wait {
            rx.await.map_err(|_| AttributionError::Closed)??;
        }
        Ok(seq)
    }

    /// Last seq written to the OS.
    pub fn last_seq(&self) -> u64 {
        *self.inner.shared.written.borrow()
    }

    /// Writes and fsyncs everything queued before the call; for shutdown.
    pub async fn flush(&self) -> Result<(), AttributionError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = self.inner.shared.lock();
            if q.dead {
                return Err(AttributionError::Closed);
            }
            q.flushes.push(tx);
            self.inner.shared.wake.notify_one();
        }
        rx.await.map_err(|_| AttributionError::Closed)?
    }

    /// Waits until a record with seq > `after` is written or `timeout` passes (for
    /// `tail --follow` and long polls). Returns the last seq written.
    pub async fn wait_after(&self, after: u64, timeout: Duration) -> u64 {
        let mut rx = self.inner.shared.written.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|&seq| seq > after)).await;
        *rx.borrow()
    }

    /// Reads waiting in [`Self::wait_after`] for a record not written yet.
    pub fn waiting_reads(&self) -> usize {
        self.inner.shared.written.receiver_count()
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

/// The segment being appended to.
struct Active {
    /// Shared with the writer thread's fsync, which runs outside the lock.
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// When its first record was written, for `segment_max_age`.
    created: SystemTime,
}

impl Active {
    /// Opens the newest segment for appending after cutting its torn tail; returns it with the
    /// last good seq (`first - 1` if it holds no good record).
    fn recover(first: u64, path: PathBuf) -> Result<(Active, u64), AttributionError> {
        let err = |e| AttributionError::io(&path, e);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let (good, last) = last_good_line(&mut file, len).map_err(err)?;
        if good < len {
            tracing::warn!(path = %path.display(), bytes = len - good, "cutting torn tail of attribution segment");
            file.set_len(good).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        let created = first_record_time(&mut file).unwrap_or_else(SystemTime::now);
        let last_seq = last.map_or(first.saturating_sub(1), |r| r.seq);
        let active = Active {
            file: Arc::new(file),
            path,
            len: good,
            created,
        };
        Ok((active, last_seq))
    }
}

/// The length up to the end of the last '\n'-terminated line that parses as a record, and that
/// record. Scans back from the end: only a tail chunk, unless no good line is found in it.
fn last_good_line(file: &mut File, len: u64) -> io::Result<(u64, Option<Record>)> {
    let mut start = len.saturating_sub(TAIL_CHUNK);
    loop {
        file.seek(SeekFrom::Start(start))?;
        let mut buf = Vec::new();
        Read::by_ref(file).take(len - start).read_to_end(&mut buf)?;
        let mut end = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        while end > 0 {
            let line_start = buf[..end - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            if line_start == 0 && start > 0 {
                break; // the line may begin before this chunk
            }
            if let Ok(record) = serde_json::from_slice::<Record>(&buf[line_start..end - 1])
                && record.seq > 0
            {
                return Ok((start + end as u64, Some(record)));
            }
            end = line_start;
        }
        if start == 0 {
            return Ok((0, None));
        }
        start = 0;
    }
}

fn first_record_time(file: &mut File) -> Option<SystemTime> {
    file.seek(SeekFrom::Start(0)).ok()?;
    let mut line = Vec::new();
    BufReader::new(file).read_until(b'\n', &mut line).ok()?;
    let record: Record = serde_json::from_slice(line.strip_suffix(b"\n")?).ok()?;
    humantime::parse_rfc3339_weak(&record.time).ok()
}

/// Writes as much of `buf` as it can; returns how much was written and the error, if any.
fn write_some(mut file: &File, buf: &[u8]) -> (usize, Option<io::Error>) {
    let mut written = 0;
    while written < buf.len() {
        match file.write(&buf[written..]) {
            Ok(0) => return (written, Some(ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// io::Error is not Clone; each waiter gets its own copy.
fn copy_result(result: &io::Result<()>, path: &Path) -> Result<(), AttributionError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(AttributionError::io(
            path,
            io::Error::new(e.kind(), e.to_string()),
        )),
    }
}

/// Marks the log dead when the writer thread exits, even by panic, so appenders get `Closed`
/// instead of waiting forever.
struct MarkDead(Arc<Shared>);

impl Drop for MarkDead {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.dead = true;
        q.records.clear();
        q.flushes.clear();
    }
}

/// The segment files and the batch being written; behind `Shared::files`.
struct Files {
    settings: AttributionSettings,
    active: Option<Active>,
    /// Taken from the queue, not yet written, in seq order. Still non-empty after a batch only if
    /// the write failed: kept so no seq is skipped or written twice.
    pending: Vec<Pending>,
    buf: Vec<u8>,
    /// End offset in `buf` of each pending record's line.
    ends: Vec<usize>,
    /// The active segment ends in part of a line that could not be cut off; the next write
    /// starts with '\n' so it becomes one bad line that readers skip.
    unterminated: bool,
    /// Written since the last fsync.
    dirty: bool,
    last_sync: Instant,
    retry_delay: Duration,
    retry_at: Instant,
}

/// The writer thread: batches in `Strict` and `Async` modes, flushes, the periodic fsync,
/// retries of failed writes, and the final flush on close.
fn run_writer(shared: Arc<Shared>) {
    let _mark = MarkDead(shared.clone());
    let idle = lock(&shared.files).settings.fsync_interval.min(MAX_IDLE);
    loop {
        let (flushes, closing) = {
            let mut q = shared.lock();
            let has_work = |q: &Queue| {
                q.closing || !q.flushes.is_empty() || (!shared.inline && !q.records.is_empty())
            };
            if !has_work(&q) {
                q = shared
                    .wake
                    .wait_timeout(q, idle)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            (std::mem::take(&mut q.flushes), q.closing)
        };
        let mut files = lock(&shared.files);
        let must = closing || !flushes.is_empty();
        if must || files.pending.is_empty() || Instant::now() >= files.retry_at {
            // `append` keeps the queue's capacity for the next batch.
            files.pending.append(&mut shared.lock().records);
            if !files.pending.is_empty() {
                files.write_pending(&shared);
            }
        }
        if !must {
            if files.dirty && files.last_sync.elapsed() >= files.settings.fsync_interval {
                // Outside the lock: inline writers go on while the disk syncs.
                let file = files.start_sync();
                drop(files);
                if let Some(file) = file
                    && let Err(e) = file.sync_data()
                {
                    tracing::error!(error = %e, "attribution fsync failed");
                }
            }
            continue;
        }
        let synced = if files.dirty { files.sync() } else { Ok(()) };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "attribution fsync failed");
        }
        let unwritten = match files.pending.len() {
            0 => synced,
            n => Err(io::Error::other(format!("{n} records not written yet"))),
        };
        for flush in flushes {
            let _ = flush.send(copy_result(&unwritten, &files.settings.dir));
        }
        if closing {
            if !files.pending.is_empty() {
                tracing::error!(
                    records = files.pending.len(),
                    "attribution log closed with unwritten records"
                );
            }
            return;
        }
    }
}

impl Files {
    /// One write for all pending records; answers those written and keeps the rest on failure.
    fn write_pending(&mut self, shared: &Shared) {
        let first_seq = self.pending[0].record.seq;
        if let Err(e) = self.rotate_if_due(first_seq) {
            return self.fail(e, shared);
        }
        let Some(active) = self.active.as_mut() else {
            return self.fail(io::Error::other("no active segment"), shared);
        };
        self.buf.clear();
        self.ends.clear();
        if self.unterminated {
            self.buf.push(b'\n');
        }
        let prefix = self.buf.len();
        for p in &self.pending {
            p.record.write_json(&mut self.buf);
            self.buf.push(b'\n');
            self.ends.push(self.buf.len());
        }
        let (mut written, error) = write_some(&active.file, &self.buf);
        let done = self.ends.partition_point(|&end| end <= written);
        let clean = match done {
            0 if written < prefix => 0,
            0 => prefix,
            n => self.ends[n - 1],
        };
        if written > clean {
            // A line was cut mid-way: remove it, or failing that, close it on the next write.
            match active.file.set_len(active.len + clean as u64) {
                Ok(()) => written = clean,
                Err(e) => tracing::warn!(error = %e, "cannot cut partly written attribution line"),
            }
        }
        self.unterminated = written > clean || (written == 0 && self.unterminated);
        active.len += written as u64;
        if done > 0 {
            self.dirty = true;
            let synced = match self.settings.durability {
                Durability::Strict => self.sync(),
                _ => Ok(()),
            };
            let path = self.active.as_ref().map_or(&self.settings.dir, |a| &a.path);
            shared
                .written
                .send_replace(self.pending[done - 1].record.seq);
            for p in self.pending.drain(..done) {
                if let Some(ack) = p.ack {
                    let _ = ack.send(copy_result(&synced, path));
                }
            }
        }
        match error {
            None => self.retry_delay = Duration::ZERO,
            Some(e) => self.fail(e, shared),
        }
        shared.retained.store(self.pending.len(), Ordering::Relaxed);
    }

    /// Tells the waiting appenders about a failed write and schedules a retry.
    fn fail(&mut self, error: io::Error, shared: &Shared) {
        let path = self.active.as_ref().map_or(&self.settings.dir, |a| &a.path);
        tracing::error!(path = %path.display(), %error, records = self.pending.len(), "attribution write failed; retrying");
        let result = Err(error);
        for p in &mut self.pending {
            if let Some(ack) = p.ack.take() {
                let _ = ack.send(copy_result(&result, path));
            }
        }
        self.retry_delay = (self.retry_delay * 2).clamp(Duration::from_millis(10), MAX_RETRY_DELAY);
        self.retry_at = Instant::now() + self.retry_delay;
        shared.retained.store(self.pending.len(), Ordering::Relaxed);
    }

    fn sync(&mut self) -> io::Result<()> {
        match self.start_sync() {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Marks everything written so far as synced and returns the file to fdatasync.
    fn start_sync(&mut self) -> Option<Arc<File>> {
        self.last_sync = Instant::now();
        self.dirty = false;
        self.active.as_ref().map(|a| a.file.clone())
    }

    /// Starts segment `first_seq` if there is none yet or the active one is full or old.
    fn rotate_if_due(&mut self, first_seq: u64) -> io::Result<()> {
        if let Some(a) = &self.active {
            let age = a.created.elapsed().unwrap_or_default();
            let full = a.len >= self.settings.segment_max_bytes;
            if a.len == 0 || !(full || age >= self.settings.segment_max_age) {
                return Ok(());
            }
        }
        // Old segment durable before the new one exists: after a machine crash the newest
        // segment's name must not claim seqs the old one lost.
        if self.dirty
            && let Err(e) = self.sync()
        {
            tracing::error!(error = %e, "attribution fsync before rotation failed");
        }
        let dir = &self.settings.dir;
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let len = file.metadata()?.len();
        sync_dir(dir)?;
        self.active = Some(Active {
            file: Arc::new(file),
            path,
            len,
            created: SystemTime::now(),
        });
        self.unterminated = false;
        self.enforce_retention();
        Ok(())
    }

    /// Deletes the oldest closed segments while too old or while all segments are too big.
    /// Stops at the first one kept, so what remains is contiguous.
    fn enforce_retention(&self) {
        let (max_age, max_bytes) = (
            self.settings.retention_max_age,
            self.settings.retention_max_bytes,
        );
        if max_age.is_none() && max_bytes.is_none() {
            return;
        }
        let segments = match list_segments(&self.settings.dir) {
            Ok(segments) => segments,
            Err(e) => return tracing::warn!(error = %e, "attribution retention skipped"),
        };
        let active = self.active.as_ref().map(|a| a.path.as_path());
        let mut total = 0;
        let mut closed = Vec::new();
        for (_, path) in segments {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            total += meta.len();
            if Some(path.as_path()) != active {
                closed.push((path, meta.len(), meta.modified().ok()));
            }
        }
        for (path, len, modified) in closed {
            let age = modified.and_then(|m| m.elapsed().ok());
            let too_old = max_age.is_some_and(|max| age.is_some_and(|age| age > max));
            let too_big = max_bytes.is_some_and(|max| total > max);
            if !(too_old || too_big) {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    total -= len;
                    tracing::info!(path = %path.display(), "deleted attribution segment (retention)");
                }
                Err(e) => {
                    return tracing::warn!(path = %path.display(), error = %e, "attribution retention");
                }
            }
        }
    }
}

/// `now` in RFC 3339, UTC, with milliseconds, exactly as `humantime` writes it; the date and
/// time of day are formatted once a second per thread, since every record asks.
fn rfc3339_millis(now: SystemTime) -> String {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let second = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let whole = UNIX_EPOCH + Duration::from_secs(second);
            let text = humantime::format_rfc3339_seconds(whole).to_string();
            // `YYYY-MM-DDTHH:MM:SSZ`: anything else (a year past 9999) is written whole.
            let Some(Ok(day_and_time)) = text.as_bytes().get(..19).map(<[u8; 19]>::try_from) else {
                return humantime::format_rfc3339_millis(now).to_string();
            };
            *cached = (second, day_and_time);
        }
        let millis = since.subsec_millis();
        let mut out = String::with_capacity(24);
        out.push_str(std::str::from_utf8(&cached.1).unwrap_or_default());
        out.push('.');
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            out.push(char::from(b'0' + digit as u8));
        }
        out.push('Z');
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_times_read_as_humantime_writes_them() {
        let mut times = vec![UNIX_EPOCH, SystemTime::now()];
        for secs in [951_782_400, 1_709_164_799, 1_798_761_599, 4_102_444_800] {
            for millis in [0, 1, 9, 10, 99, 100, 500, 999] {
                times.push(UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis));
            }
        }
        // Times in one second follow each other: the cached second is checked too.
        for time in &times {
            let expected = humantime::format_rfc3339_millis(*time).to_string();
            assert_eq!(rfc3339_millis(*time), expected);
        }
        // Sub-millisecond parts are cut, as humantime cuts them.
        let time = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_999_999);
        assert_eq!(rfc3339_millis(time), "2023-11-14T22:13:20.123Z");
    }

    fn tail(content: &[u8]) -> (u64, Option<u64>) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("s");
        std::fs::write(&path, content).unwrap();
        let mut file = File::open(&path).unwrap();
        let (good, last) = last_good_line(&mut file, content.len() as u64).unwrap();
        (good, last.map(|r| r.seq))
    }

    /// Points the active segment at `file` (a read-only handle makes every write fail).
    fn swap_file(log: &AttributionLog, file: File) {
        let mut files = lock(&log.inner.shared.files);
        files.active.as_mut().unwrap().file = Arc::new(file);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_writes_are_reported_kept_and_retried_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let log = AttributionLog::open(AttributionSettings::new(tmp.path().into())).unwrap();
        let record = || Record {
            kind: crate::attribution::Kind::Start,
            ..Record::default()
        };
        assert_eq!(log.append(record()).await.unwrap(), 1);
        let path = log
            .inner
            .shared
            .files
            .lock()
            .unwrap()
            .active
            .as_ref()
            .unwrap()
            .path
            .clone();

        swap_file(&log, File::open(&path).unwrap());
        let appends: Vec<_> = (0..3)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move { log.append(record()).await })
            })
            .collect();
        for append in appends {
            let result = tokio::time::timeout(Duration::from_secs(10), append).await;
            let err = result.unwrap().unwrap().unwrap_err();
            assert!(matches!(err, AttributionError::Io { .. }), "{err}");
        }
        assert_eq!(log.last_seq(), 1);

        // The disk recovers: the kept records land before the next one, in seq order.
        swap_file(&log, OpenOptions::new().append(true).open(&path).unwrap());
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match log.append(record()).await {
                    Ok(seq) => break seq,
                    Err(AttributionError::Io { .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await
        .unwrap();
        let seqs: Vec<u64> = super::super::read_records(tmp.path(), 0, usize::MAX)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, (1..=next).collect::<Vec<_>>());
        assert!(next >= 5, "the three failed records were kept: {seqs:?}");
    }

    #[test]
    fn last_good_line_skips_torn_and_garbage_tails() {
        let a = b"{\"seq\":1}\n{\"seq\":2}\n";
        assert_eq!(tail(a), (a.len() as u64, Some(2)));
        assert_eq!(tail(b"{\"seq\":1}\n{\"seq\":2,\"id"), (10, Some(1)));
        assert_eq!(tail(b"{\"seq\":1}\ngarbage\n\0\0\0"), (10, Some(1)));
        assert_eq!(tail(b"{\"seq\":1,"), (0, None));
        assert_eq!(tail(b""), (0, None));
    }

    #[test]
    fn last_good_line_looks_past_the_tail_chunk() {
        // A good line followed by more than TAIL_CHUNK of unterminated junk.
        let mut content = b"{\"seq\":9}\n".to_vec();
        content.resize(content.len() + TAIL_CHUNK as usize + 10, b'x');
        assert_eq!(tail(&content), (10, Some(9)));
    }
}
