//! The spool as an interface, so the gateway does not care where completions are kept: the
//! embedded [`Spool`] of one process, or [`crate::PgSpool`] shared by replicas, whose
//! deliveries are claimed with leases.

use crate::spool::{EntryState, Spool, SpoolEntry, SpoolError};

/// A durable spool of deliveries and notes. Every method commits before it returns.
pub trait DurableSpool: Send + Sync + 'static {
    fn put_note(&self, payload: &[u8], expires_ms: u64) -> Result<u64, SpoolError>;
    fn get_note(&self, id: u64, now_ms: u64) -> Result<Option<Vec<u8>>, SpoolError>;
    fn sweep_notes(&self, now_ms: u64) -> Result<usize, SpoolError>;
    fn push_once(
        &self,
        key: &[u8],
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
        note: Option<u64>,
    ) -> Result<Option<SpoolEntry>, SpoolError>;
    fn was_pushed(&self, key: &[u8], now_ms: u64) -> Result<bool, SpoolError>;
    fn update(&self, entry: &SpoolEntry) -> Result<(), SpoolError>;
    fn remove(&self, id: u64) -> Result<bool, SpoolError>;
    fn get(&self, id: u64) -> Result<Option<SpoolEntry>, SpoolError>;
    fn list(&self, state: Option<EntryState>) -> Result<Vec<SpoolEntry>, SpoolError>;

    /// Takes (or keeps) the right to deliver entry `id` for a lease; false while another
    /// process holds it. A spool of one process always says yes.
    fn claim(&self, id: u64, now_ms: u64) -> Result<bool, SpoolError> {
        let _ = (id, now_ms);
        Ok(true)
    }

    /// Extends the leases of every pending entry this process holds.
    fn renew(&self, now_ms: u64) -> Result<(), SpoolError> {
        let _ = now_ms;
        Ok(())
    }

    /// Pending entries whose holder's lease ran out (it died): to be claimed and delivered.
    fn orphaned(&self, now_ms: u64) -> Result<Vec<u64>, SpoolError> {
        let _ = now_ms;
        Ok(Vec::new())
    }
}

impl DurableSpool for Spool {
    fn put_note(&self, payload: &[u8], expires_ms: u64) -> Result<u64, SpoolError> {
        Spool::put_note(self, payload, expires_ms)
    }
    fn get_note(&self, id: u64, now_ms: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        Spool::get_note(self, id, now_ms)
    }
    fn sweep_notes(&self, now_ms: u64) -> Result<usize, SpoolError> {
        Spool::sweep_notes(self, now_ms)
    }
    fn push_once(
        &self,
        key: &[u8],
        payload: &[u8],
        now_ms: u64,
        expires_ms: u64,
        note: Option<u64>,
    ) -> Result<Option<SpoolEntry>, SpoolError> {
        Spool::push_once(self, key, payload, now_ms, expires_ms, note)
    }
    fn was_pushed(&self, key: &[u8], now_ms: u64) -> Result<bool, SpoolError> {
        Spool::was_pushed(self, key, now_ms)
    }
    fn update(&self, entry: &SpoolEntry) -> Result<(), SpoolError> {
        Spool::update(self, entry)
    }
    fn remove(&self, id: u64) -> Result<bool, SpoolError> {
        Spool::remove(self, id)
    }
    fn get(&self, id: u64) -> Result<Option<SpoolEntry>, SpoolError> {
        Spool::get(self, id)
    }
    fn list(&self, state: Option<EntryState>) -> Result<Vec<SpoolEntry>, SpoolError> {
        Spool::list(self, state)
    }
}
