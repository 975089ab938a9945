//! Map keys made of strings, searched with borrowed ones: a key type gives its strings
//! (`StrKey`) and lends itself as `dyn StrKey` (`Borrow`), so `[&str; N]` finds an entry
//! without building an owned key; the owned key is built only when the entry is new.

use std::hash::{Hash, Hasher};

/// The strings a key is made of, in order: owned and borrowed forms hash and compare by them.
pub trait StrKey<const N: usize> {
    fn parts(&self) -> [&str; N];
}

impl<const N: usize> StrKey<N> for [&str; N] {
    fn parts(&self) -> [&str; N] {
        *self
    }
}

impl<const N: usize> Hash for dyn StrKey<N> + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl<const N: usize> PartialEq for dyn StrKey<N> + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl<const N: usize> Eq for dyn StrKey<N> + '_ {}
