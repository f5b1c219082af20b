//! Maps keyed by request ID. IDs are small integers chosen by the peer and
//! such maps sit on the per-frame path, so they use a cheap multiplicative
//! hash rather than SipHash. A peer can pick at most 65536 distinct keys,
//! so it cannot build long collision chains that matter.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Hashes a request ID by multiplying it by an odd constant: consecutive
/// IDs land in different buckets and the high bits are well mixed.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u16(&mut self, id: u16) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by request ID, hashed with [`IdHasher`].
pub type IdMap<V> = HashMap<u16, V, BuildHasherDefault<IdHasher>>;
