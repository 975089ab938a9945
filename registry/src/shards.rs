//! Copy-on-write maps split into shards, so publishing a write copies one shard of the table
//! (about `len / SHARDS` entries) instead of all of it.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::index::KeyIndex;
use crate::model::Endpoint;

const SHARDS: usize = 64;

/// Picks a key's shard from its length and last bytes: O(1) on long keys, and enough spread for
/// random ids and for names that differ in a suffix. Only spreads write cost; lookups in a shard
/// still hash the whole key.
fn shard_of(key: &str) -> usize {
    let mut h = key.len() as u64;
    for &b in key.as_bytes().iter().rev().take(8) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 29)) as usize % SHARDS
}

/// The map operations [`Shards`] needs from each shard.
pub(crate) trait ShardMap<V>: Clone + Default {
    fn insert_key(&mut self, key: Arc<str>, value: V);
    fn remove_key(&mut self, key: &str);
    fn get_key(&self, key: &str) -> Option<&V>;
    fn count(&self) -> usize;
}

macro_rules! shard_map {
    ($map:ident) => {
        impl<V: Clone> ShardMap<V> for $map<Arc<str>, V> {
            fn insert_key(&mut self, key: Arc<str>, value: V) {
                self.insert(key, value);
            }
            fn remove_key(&mut self, key: &str) {
                self.remove(key);
            }
            fn get_key(&self, key: &str) -> Option<&V> {
                self.get(key)
            }
            fn count(&self) -> usize {
                self.len()
            }
        }
    };
}

shard_map!(HashMap);
shard_map!(BTreeMap);

impl ShardMap<Arc<Endpoint>> for KeyIndex {
    fn insert_key(&mut self, key: Arc<str>, value: Arc<Endpoint>) {
        self.insert(&key, value);
    }
    fn remove_key(&mut self, key: &str) {
        self.remove(key);
    }
    fn get_key(&self, key: &str) -> Option<&Arc<Endpoint>> {
        self.get(key)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// `SHARDS` maps behind `Arc`s: cloning copies 64 pointers; a write clones only the shard it
/// touches, and only if an older snapshot still shares it.
#[derive(Clone)]
pub(crate) struct Shards<M> {
    shards: Vec<Arc<M>>,
}

impl<M: Default> Default for Shards<M> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| Arc::default()).collect(),
        }
    }
}

impl<M> Shards<M> {
    pub(crate) fn get<V>(&self, key: &str) -> Option<&V>
    where
        M: ShardMap<V>,
    {
        self.shards[shard_of(key)].get_key(key)
    }

    pub(crate) fn insert<V>(&mut self, key: Arc<str>, value: V)
    where
        M: ShardMap<V>,
    {
        let shard = shard_of(key.borrow());
        Arc::make_mut(&mut self.shards[shard]).insert_key(key, value);
    }

    pub(crate) fn remove<V>(&mut self, key: &str)
    where
        M: ShardMap<V>,
    {
        Arc::make_mut(&mut self.shards[shard_of(key)]).remove_key(key);
    }

    pub(crate) fn len<V>(&self) -> usize
    where
        M: ShardMap<V>,
    {
        self.shards.iter().map(|s| s.count()).sum()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &M> {
        self.shards.iter().map(|s| &**s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_copy_only_the_shard_they_touch() {
        let mut a: Shards<HashMap<Arc<str>, u32>> = Shards::default();
        for i in 0..1000 {
            a.insert(format!("endpoint-{i}").into(), i);
        }
        let b = a.clone();
        a.insert("endpoint-5".into(), 55);
        a.remove("endpoint-6");
        assert_eq!(a.get("endpoint-5"), Some(&55));
        assert_eq!(b.get("endpoint-5"), Some(&5));
        assert_eq!((a.get("endpoint-6"), b.get("endpoint-6")), (None, Some(&6)));
        assert_eq!((a.len(), b.len()), (999, 1000));
        let shared = a
            .shards
            .iter()
            .zip(&b.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(
            shared >= SHARDS - 2,
            "only touched shards are copied: {shared} shared"
        );
    }

    #[test]
    fn keys_spread_over_shards() {
        let mut used = [0usize; SHARDS];
        for i in 0..10_000 {
            used[shard_of(&format!("endpoint-{i}"))] += 1;
            used[shard_of(&uuid::Uuid::new_v4().to_string())] += 1;
        }
        let max = used.iter().max().unwrap();
        assert!(*max < 3 * 20_000 / SHARDS, "{used:?}");
    }
}
