//! The lookup index behind [`crate::Registry::resolve`]: one open-addressing table from a key (an
//! endpoint's id or its name) to the endpoint, with one cache line per slot.
//!
//! Why not a `HashMap<Arc<str>, Arc<Endpoint>>` per key kind: a lookup there reads the control
//! bytes, the bucket and the key's own allocation, twice when a name misses the id map first.
//! With 10,000 endpoints those are cache misses. Here the slot holds the hash, the key's bytes
//! (inline up to [`INLINE_KEY`] bytes, which covers ids and most names) and the endpoint, so a
//! lookup reads one slot, usually, and then the endpoint it returns.

use std::hash::BuildHasher;
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::model::Endpoint;

/// Keys up to this many bytes are stored in the slot; longer ones on the heap.
const INLINE_KEY: usize = 46;

#[derive(Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

impl Key {
    fn new(key: &str) -> Key {
        match u8::try_from(key.len()) {
            Ok(len) if key.len() <= INLINE_KEY => {
                let mut bytes = [0; INLINE_KEY];
                bytes[..key.len()].copy_from_slice(key.as_bytes());
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(key.into()),
        }
    }

    fn is(&self, key: &str) -> bool {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)] == key.as_bytes(),
            Key::Heap(k) => **k == *key,
        }
    }
}

#[derive(Clone)]
struct Entry {
    hash: u64,
    key: Key,
    endpoint: Arc<Endpoint>,
}

/// One cache line: a probe that finds its key reads nothing else before the endpoint.
#[derive(Clone, Default)]
#[repr(align(64))]
struct Slot(Option<Entry>);

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

/// Linear probing at a load of at most a quarter, with backward-shift deletion (no tombstones),
/// so a probe ends at the first empty slot. The low load is deliberate: a second probe is a
/// second cache line, and at 10,000 endpoints those lines come from L2 or further. At a quarter,
/// about nine lookups in ten read one slot; at a half (half the memory: about 4 MB at 10,000
/// endpoints instead of 8) lookups were 5 – 8 % slower there.
#[derive(Clone, Default)]
pub(crate) struct KeyIndex {
    slots: Box<[Slot]>,
    len: usize,
    hasher: RandomState,
}

impl KeyIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The first slot to look at for `hash`; the table's length is a power of two.
    fn home(&self, hash: u64) -> usize {
        // High bits: foldhash's low bits are the weakest.
        (hash >> 32) as usize & self.mask()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Arc<Endpoint>> {
        if self.len == 0 {
            return None;
        }
        let hash = self.hasher.hash_one(key);
        let mut at = self.home(hash);
        loop {
            match &self.slots[at].0 {
                None => return None,
                Some(e) if e.hash == hash && e.key.is(key) => return Some(&e.endpoint),
                Some(_) => at = (at + 1) & self.mask(),
            }
        }
    }

    /// Maps `key` to `endpoint`, replacing what it mapped to.
    pub(crate) fn insert(&mut self, key: &str, endpoint: Arc<Endpoint>) {
        if (self.len + 1) * 4 > self.slots.len() {
            self.resize((self.slots.len() * 2).max(8));
        }
        let hash = self.hasher.hash_one(key);
        let mut at = self.home(hash);
        loop {
            match &mut self.slots[at].0 {
                Some(e) if e.hash == hash && e.key.is(key) => {
                    e.endpoint = endpoint;
                    return;
                }
                Some(_) => at = (at + 1) & self.mask(),
                empty @ None => {
                    *empty = Some(Entry {
                        hash,
                        key: Key::new(key),
                        endpoint,
                    });
                    self.len += 1;
                    return;
                }
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &str) {
        if self.len == 0 {
            return;
        }
        let hash = self.hasher.hash_one(key);
        let mut hole = self.home(hash);
        loop {
            match &self.slots[hole].0 {
                None => return,
                Some(e) if e.hash == hash && e.key.is(key) => break,
                Some(_) => hole = (hole + 1) & self.mask(),
            }
        }
        self.slots[hole].0 = None;
        self.len -= 1;
        // Pull later entries of the run back over the hole when their home allows it, so
        // every entry stays reachable from its home without crossing an empty slot.
        let mut next = hole;
        loop {
            next = (next + 1) & self.mask();
            let Some(e) = &self.slots[next].0 else { break };
            let home = self.home(e.hash);
            let distance_to_next = next.wrapping_sub(home) & self.mask();
            let distance_to_hole = hole.wrapping_sub(home) & self.mask();
            if distance_to_hole < distance_to_next {
                self.slots[hole].0 = self.slots[next].0.take();
                hole = next;
            }
        }
        if self.slots.len() > 8 && self.len * 16 < self.slots.len() {
            self.resize(self.slots.len() / 2);
        }
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(
            &mut self.slots,
            (0..slots).map(|_| Slot::default()).collect(),
        );
        for entry in old.into_vec().into_iter().filter_map(|s| s.0) {
            let mut at = self.home(entry.hash);
            while self.slots[at].0.is_some() {
                at = (at + 1) & self.mask();
            }
            self.slots[at].0 = Some(entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::{EndpointSpec, Target};

    fn endpoint(n: usize) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            id: format!("id-{n}"),
            version: 1,
            created_time: String::new(),
            last_modified_time: String::new(),
            url_prefix: String::new(),
            spec: EndpointSpec {
                name: format!("name-{n}"),
                description: String::new(),
                target: Target::External {
                    url: "https://h.example".into(),
                },
                allowed_caller_namespaces: Vec::new(),
            },
        })
    }

    /// Random inserts, replacements and removals, long and short keys; the length is checked
    /// against a `HashMap` after every step and every key's answer at the end: backward-shift
    /// deletion must never strand an entry.
    #[test]
    fn agrees_with_a_hash_map_through_inserts_and_removals() {
        let mut index = KeyIndex::default();
        let mut model: HashMap<String, usize> = HashMap::new();
        let endpoints: Vec<_> = (0..64).map(endpoint).collect();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let key = |k: u64| {
            if k.is_multiple_of(3) {
                format!("a-long-key-that-does-not-fit-in-the-slot-{k:0>40}")
            } else {
                format!("k{k}")
            }
        };
        for _ in 0..20_000 {
            let k = key(next() % 300);
            if next().is_multiple_of(3) {
                index.remove(&k);
                model.remove(&k);
            } else {
                let e = (next() % 64) as usize;
                index.insert(&k, endpoints[e].clone());
                model.insert(k, e);
            }
            assert_eq!(index.len(), model.len());
        }
        for k in (0..300).map(key) {
            let want = model.get(&k).map(|&e| &endpoints[e].id);
            assert_eq!(index.get(&k).map(|e| &e.id), want, "key {k}");
        }
        assert!(index.get("absent").is_none());
    }

    /// Runs that wrap from the last slot to slot 0, with a deletion on either side of the end.
    #[test]
    fn backward_shift_across_the_end_of_the_table() {
        for _ in 0..20 {
            let probe = KeyIndex::default(); // a fresh hasher each round
            // 1. Three keys homed at 15 fill slots 15, 0, 1. Removing the one at 0 must pull
            //    the one at 1 back across the end.
            let a = homed(&probe, 15, 3, "a");
            let keys: Vec<_> = a.iter().map(|k| (15, k.clone())).collect();
            check_with(&probe, &keys, &a[1]);
            // 2. x homed at 13; y, z, w homed at 14 fill 14, 15, 0. Removing x must NOT pull
            //    w (home 14) back to 13, in front of its home.
            let x = homed(&probe, 13, 1, "x");
            let mut keys = vec![(13, x[0].clone())];
            keys.extend(homed(&probe, 14, 3, "y").into_iter().map(|k| (14, k)));
            check_with(&probe, &keys, &x[0]);
        }
    }

    /// Keys whose home in a 16-slot table is `home`, under `index`'s hasher.
    fn homed(index: &KeyIndex, home: usize, n: usize, tag: &str) -> Vec<String> {
        (0..)
            .map(|i| format!("{tag}{i}"))
            .filter(|k| (index.hasher.hash_one(k.as_str()) >> 32) as usize & 15 == home)
            .take(n)
            .collect()
    }

    /// Inserts `keys` in order into a clone of `probe` (same hasher), removes one, checks all.
    fn check_with(probe: &KeyIndex, keys: &[(usize, String)], remove: &str) {
        let mut index = probe.clone();
        for (n, (_, k)) in keys.iter().enumerate() {
            index.insert(k, endpoint(n));
        }
        assert_eq!(index.slots.len(), 16);
        for (home, k) in keys {
            assert_eq!(index.home(index.hasher.hash_one(k.as_str())), *home);
        }
        index.remove(remove);
        for (n, (_, k)) in keys.iter().enumerate() {
            let got = index.get(k).map(|e| e.id.clone());
            let want = (k != remove).then(|| format!("id-{n}"));
            assert_eq!(got, want, "key {k} after removing {remove}");
        }
    }

    #[test]
    fn shrinks_when_emptied_and_still_answers() {
        let mut index = KeyIndex::default();
        for n in 0..1000 {
            index.insert(&format!("k{n}"), endpoint(n));
        }
        for n in 0..995 {
            index.remove(&format!("k{n}"));
        }
        assert!(
            index.slots.len() <= 64,
            "{} slots for 5 keys",
            index.slots.len()
        );
        for n in 995..1000 {
            assert_eq!(index.get(&format!("k{n}")).unwrap().id, format!("id-{n}"));
        }
        assert!(index.get("k3").is_none());
    }
}
