//! A durable spool of deliveries that must not be lost (e.g. async completions accepted from a
//! handler but not yet delivered to the caller). Each push is committed (fsync) before it
//! returns, so `kill -9` after an acknowledgement loses nothing. Payloads are opaque bytes.
//!
//! It also keeps *notes*: opaque bytes kept durably under a short id until an entry takes them
//! or they expire (e.g. a callback too long to travel inside its own URL, taken by the
//! completion that uses it).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Note id → expiry (unix ms, little-endian u64) ‖ payload.
const NOTES: TableDefinition<u64, &[u8]> = TableDefinition::new("notes");
/// Keys of entries pushed with [`Spool::push_once`], with their expiry (ms since the epoch).
const ONCE: TableDefinition<&[u8], u64> = TableDefinition::new("once");
const NEXT_ID: &str = "next_id";
const NEXT_NOTE: &str = "next_note";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    /// Waiting for (another) delivery attempt.
    Pending,
    /// Given up on (non-retryable answer or expired); kept for an operator to retry or drop.
    Failed,
}

/// One spooled delivery and its bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub id: u64,
    pub state: EntryState,
    pub attempts: u32,
    /// Unix time (ms) of the next attempt.
    pub next_attempt_ms: u64,
    pub created_ms: u64,
    /// Unix time (ms) after which delivery is given up.
    pub expires_ms: u64,
    pub last_error: Option<String>,
    pub payload: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("spool: {0}")]
pub struct SpoolError(String);

impl SpoolError {
    pub fn new(message: impl Into<String>) -> Self {
        SpoolError(message.into())
    }
}

fn err(e: impl std::fmt::Display) -> SpoolError {
    SpoolError(e.to_string())
}

pub struct Spool {
    db: Database,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool").finish_non_exhaustive()
    }
}

impl Spool {
    pub fn open(path: &Path) -> Result<Spool, SpoolError> {
        let db = Database::create(path).map_err(err)?;
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(ENTRIES).map_err(err)?;
        tx.open_table(META).map_err(err)?;
        tx.open_table(NOTES).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Spool { db })
    }

    /// Keeps `payload` durably until `expires_ms` (or until removed); returns its id.
    pub fn put_note(&self, payload: &[u8], expires_ms: u64) -> Result<u64, SpoolError> {
        let tx = self.db.begin_write().map_err(err)?;
        let id = {
            let mut meta = tx.open_table(META).map_err(err)?;
            let id = meta.get(NEXT_NOTE).map_err(err)?.map_or(1, |v| v.value());
            meta.insert(NEXT_NOTE, id + 1).map_err(err)?;
            let mut value = expires_ms.to_le_bytes().to_vec();
            value.extend_from_slice(payload);
            let mut notes = tx.open_table(NOTES).map_err(err)?;
            notes.insert(id, value.as_slice()).map_err(err)?;
            id
        };
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// The note's payload, unless it was removed or has expired by `now_ms`.
    pub fn get_note(&self, id: u64, now_ms: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(NOTES).map_err(err)?;
        let Some(value) = table.get(id).map_err(err)? else {
            return Ok(None);
        };
        let value = value.value();
        let (expires, payload) = value
            .split_first_chunk::<8>()
            .ok_or_else(|| SpoolError(format!("note {id} is corrupt")))?;
        Ok((u64::from_le_bytes(*expires) >= now_ms).then(|| payload.to_vec()))
    }

    /// Removes the notes and [`Self::push_once`] keys expired by `now_ms`; returns how many
    /// notes.
    pub fn sweep_notes(&self, now_ms: u64) -> Result<usize, SpoolError> {
        let tx = self.db.begin_write().map_err(err)?;
        tx.open_table(ONCE)
            .map_err(err)?
            .retain(|_, expires| expires >= now_ms)
            .map_err(err)?;
        let swept = {
            let mut notes = tx.open_table(NOTES).map_err(err)?;
            let before = notes.len().map_err(err)?;
            notes
                .retain(|_, value| {
                    value
                        .first_chunk::<8>()
                        .is_none_or(|expires| u64::from_le_bytes(*expires) >= now_ms)
                })
                .map_err(err)?;
            before - notes.len().map_err(err)?
        };
        tx.commit().map_err(err)?;
        Ok(swept as usize)
    }

    /// Stores a new pending entry, durably, and returns its id.
    pub fn push(
        &self,
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<SpoolEntry, SpoolError> {
        self.push_taking_note(payload, now_ms, expires_ms, None)
    }

    /// [`Self::push`], removing note `note` (if any) in the same transaction: an entry that
    /// uses up the note it was made from.
    pub fn push_taking_note(
        &self,
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
        note: Option<u64>,
    ) -> Result<SpoolEntry, SpoolError> {
        self.push_inner(None, payload, now_ms, expires_ms, note)
            .map(|e| e.expect("always pushed without a key"))
    }

    /// [`Self::push_taking_note`] at most once per `key` until `expires_ms`: `None`, and
    /// nothing changed, when an entry was already pushed with this key. The key is recorded
    /// in the same transaction as the entry, so a crash leaves both or neither.
    pub fn push_once(
        &self,
        key: &[u8],
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
        note: Option<u64>,
    ) -> Result<Option<SpoolEntry>, SpoolError> {
        self.push_inner(Some(key), payload, now_ms, expires_ms, note)
    }

    /// Whether an entry was pushed with `key` (and the key has not expired by `now_ms`).
    pub fn was_pushed(&self, key: &[u8], now_ms: u64) -> Result<bool, SpoolError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = match tx.open_table(ONCE) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(false),
            Err(e) => return Err(err(e)),
        };
        Ok(table
            .get(key)
            .map_err(err)?
            .is_some_and(|expires| expires.value() >= now_ms))
    }

    fn push_inner(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
        note: Option<u64>,
    ) -> Result<Option<SpoolEntry>, SpoolError> {
        let tx = self.db.begin_write().map_err(err)?;
        if let Some(key) = key {
            let mut once = tx.open_table(ONCE).map_err(err)?;
            let seen = once
                .get(key)
                .map_err(err)?
                .is_some_and(|expires| expires.value() >= now_ms);
            if seen {
                return Ok(None);
            }
            once.insert(key, expires_ms).map_err(err)?;
        }
        if let Some(note) = note {
            tx.open_table(NOTES)
                .map_err(err)?
                .remove(note)
                .map_err(err)?;
        }
        let entry = {
            let mut meta = tx.open_table(META).map_err(err)?;
            let id = meta.get(NEXT_ID).map_err(err)?.map_or(1, |v| v.value());
            meta.insert(NEXT_ID, id + 1).map_err(err)?;
            let entry = SpoolEntry {
                id,
                state: EntryState::Pending,
                attempts: 0,
                next_attempt_ms: now_ms,
                created_ms: now_ms,
                expires_ms,
                last_error: None,
                payload: payload.to_vec(),
            };
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            entries.insert(id, encode(&entry).as_slice()).map_err(err)?;
            entry
        };
        tx.commit().map_err(err)?;
        Ok(Some(entry))
    }

    /// Rewrites an entry's bookkeeping (attempts, state, next attempt, error).
    pub fn update(&self, entry: &SpoolEntry) -> Result<(), SpoolError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut entries = tx.open_table(ENTRIES).map_err(err)?;
            if entries.get(entry.id).map_err(err)?.is_none() {
                return Ok(());
            }
            entries
                .insert(entry.id, encode(entry).as_slice())
                .map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Removes an entry (delivered or dropped); false if it was not there.
    pub fn remove(&self, id: u64) -> Result<bool, SpoolError> {
        let tx = self.db.begin_write().map_err(err)?;
        let removed = tx
            .open_table(ENTRIES)
            .map_err(err)?
            .remove(id)
            .map_err(err)?
            .is_some();
        tx.commit().map_err(err)?;
        Ok(removed)
    }

    pub fn get(&self, id: u64) -> Result<Option<SpoolEntry>, SpoolError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(ENTRIES).map_err(err)?;
        let value = table.get(id).map_err(err)?;
        value.map(|v| decode(id, v.value())).transpose()
    }

    /// Entries in id order, optionally only those in `state`.
    pub fn list(&self, state: Option<EntryState>) -> Result<Vec<SpoolEntry>, SpoolError> {
        let tx = self.db.begin_read().map_err(err)?;
        let table = tx.open_table(ENTRIES).map_err(err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(err)? {
            let (id, value) = row.map_err(err)?;
            let entry = decode(id.value(), value.value())?;
            if state.is_none_or(|s| s == entry.state) {
                out.push(entry);
            }
        }
        Ok(out)
    }
}

// Layout: state u8, attempts u32, next u64, created u64, expires u64, error len u32, error,
// payload. Little-endian; small and free of a serialization dependency.
fn encode(e: &SpoolEntry) -> Vec<u8> {
    let error = e.last_error.as_deref().unwrap_or("").as_bytes();
    let mut out = Vec::with_capacity(33 + error.len() + e.payload.len());
    out.push(match e.state {
        EntryState::Pending => 0,
        EntryState::Failed => 1,
    });
    out.extend_from_slice(&e.attempts.to_le_bytes());
    out.extend_from_slice(&e.next_attempt_ms.to_le_bytes());
    out.extend_from_slice(&e.created_ms.to_le_bytes());
    out.extend_from_slice(&e.expires_ms.to_le_bytes());
    out.extend_from_slice(&(error.len() as u32).to_le_bytes());
    out.extend_from_slice(error);
    out.extend_from_slice(&e.payload);
    out
}

fn decode(id: u64, b: &[u8]) -> Result<SpoolEntry, SpoolError> {
    let corrupt = || SpoolError(format!("entry {id} is corrupt"));
    let u32_at = |i: usize| -> Result<u32, SpoolError> {
        Ok(u32::from_le_bytes(
            b.get(i..i + 4)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        ))
    };
    let u64_at = |i: usize| -> Result<u64, SpoolError> {
        Ok(u64::from_le_bytes(
            b.get(i..i + 8)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        ))
    };
    let state = match b.first() {
        Some(0) => EntryState::Pending,
        Some(1) => EntryState::Failed,
        _ => return Err(corrupt()),
    };
    let error_len = u32_at(29)? as usize;
    let error = b.get(33..33 + error_len).ok_or_else(corrupt)?;
    Ok(SpoolEntry {
        id,
        state,
        attempts: u32_at(1)?,
        next_attempt_ms: u64_at(5)?,
        created_ms: u64_at(13)?,
        expires_ms: u64_at(21)?,
        last_error: (!error.is_empty()).then(|| String::from_utf8_lossy(error).into_owned()),
        payload: b[33 + error_len..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_with_their_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let (a, b) = {
            let spool = Spool::open(&path).unwrap();
            let a = spool.push(b"first", 1_000, 9_000).unwrap();
            let mut b = spool.push(b"second", 2_000, 9_000).unwrap();
            b.attempts = 3;
            b.state = EntryState::Failed;
            b.last_error = Some("receiver answered 400".into());
            spool.update(&b).unwrap();
            (a, b)
        };
        let spool = Spool::open(&path).unwrap();
        assert_eq!(spool.list(None).unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(
            spool.list(Some(EntryState::Pending)).unwrap(),
            vec![a.clone()]
        );
        assert_eq!(spool.get(b.id).unwrap(), Some(b.clone()));
        assert!(spool.remove(a.id).unwrap());
        assert!(!spool.remove(a.id).unwrap());
        // Ids are never reused.
        assert_eq!(spool.push(b"third", 3_000, 9_000).unwrap().id, 3);
    }

    #[test]
    fn notes_survive_reopen_until_removed_or_expired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.redb");
        let (a, b) = {
            let spool = Spool::open(&path).unwrap();
            (
                spool.put_note(b"long callback", 5_000).unwrap(),
                spool.put_note(b"another", 9_000).unwrap(),
            )
        };
        let spool = Spool::open(&path).unwrap();
        assert_eq!(
            spool.get_note(a, 1_000).unwrap().as_deref(),
            Some(&b"long callback"[..])
        );
        assert_eq!(spool.get_note(a, 6_000).unwrap(), None, "expired");
        assert_eq!(spool.sweep_notes(6_000).unwrap(), 1);
        assert_eq!(
            spool.get_note(b, 6_000).unwrap().as_deref(),
            Some(&b"another"[..])
        );
        let entry = spool
            .push_taking_note(b"completion", 6_000, 9_000, Some(b))
            .unwrap();
        assert_eq!(spool.get(entry.id).unwrap(), Some(entry));
        assert_eq!(
            spool.get_note(b, 6_000).unwrap(),
            None,
            "taken with the push"
        );
        // Note ids are never reused, and apart from entry ids.
        assert_eq!(spool.put_note(b"third", 9_000).unwrap(), 3);
        assert_eq!(spool.push(b"entry", 0, 9_000).unwrap().id, 2);
    }

    #[test]
    fn push_once_pushes_a_key_once_until_it_expires_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let spool = Spool::open(&path).unwrap();
            assert!(!spool.was_pushed(b"k", 0).unwrap());
            let first = spool.push_once(b"k", b"a", 1_000, 5_000, None).unwrap();
            assert!(first.is_some());
            assert!(
                spool
                    .push_once(b"k", b"b", 2_000, 5_000, None)
                    .unwrap()
                    .is_none()
            );
            assert!(
                spool
                    .push_once(b"other", b"c", 2_000, 5_000, None)
                    .unwrap()
                    .is_some()
            );
        }
        let spool = Spool::open(&path).unwrap();
        assert!(spool.was_pushed(b"k", 5_000).unwrap());
        assert_eq!(
            spool.list(None).unwrap().len(),
            2,
            "the duplicate was not stored"
        );
        assert!(!spool.was_pushed(b"k", 5_001).unwrap(), "expired");
        spool.sweep_notes(6_000).unwrap();
        assert!(
            spool
                .push_once(b"k", b"d", 6_000, 9_000, None)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn update_of_a_removed_entry_does_not_resurrect_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.redb")).unwrap();
        let e = spool.push(b"x", 0, 1).unwrap();
        spool.remove(e.id).unwrap();
        spool.update(&e).unwrap();
        assert!(spool.get(e.id).unwrap().is_none());
    }
}
