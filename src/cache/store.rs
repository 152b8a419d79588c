//! The in-memory store: moka, weighed in bytes.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use moka::Expiry;

use super::entry::Entry;

/// The most variants (distinct `Vary` selections) kept per URL; the oldest goes.
const MAX_VARIANTS: usize = 16;

/// The stored variants of one URL, with the URL's primary key (moka's key is
/// only a hash of it: a hit compares this). Cloned on every read, so every
/// part is behind an `Arc`.
#[derive(Clone, Debug)]
pub(crate) enum Variants {
    /// Most URLs have one variant, held with no list around it.
    One { key: Arc<str>, entry: Arc<Entry> },
    /// The URL's `Vary` selections, each with its own response.
    Many(Arc<Many>),
}

/// Several variants of one URL, oldest first.
#[derive(Debug)]
pub(crate) struct Many {
    key: Box<str>,
    entries: Box<[Arc<Entry>]>,
}

impl Variants {
    fn key(&self) -> &str {
        match self {
            Variants::One { key, .. } => key,
            Variants::Many(many) => &many.key,
        }
    }

    fn entries(&self) -> &[Arc<Entry>] {
        match self {
            Variants::One { entry, .. } => std::slice::from_ref(entry),
            Variants::Many(many) => &many.entries,
        }
    }

    fn weight(&self) -> u32 {
        let list = match self {
            Variants::One { .. } => 0,
            Variants::Many(many) => {
                2 * std::mem::size_of::<usize>()
                    + std::mem::size_of::<Many>()
                    + std::mem::size_of_val::<[Arc<Entry>]>(&many.entries)
            }
        };
        let bytes = STORE_OVERHEAD
            + self.key().len()
            + 2 * std::mem::size_of::<usize>()
            + list
            + self.entries().iter().map(|e| e.weight()).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// What moka keys a URL on: a 128-bit keyed hash of its primary key.
///
/// moka hashes its keys again whenever its table grows or sheds removed slots;
/// a key held inline spares it a read of the URL's text, a cache miss per
/// stored URL on a large store. Two URLs with the same hash evict each other
/// (a hit compares the full key), which a cache may always do.
type Id = u128;

/// moka's own bytes per stored URL (its entry, deque and timer nodes, hash table
/// slot), as `benches/cache.rs` measures it for a sync cache with a weigher and
/// per-entry expiry holding 10,000 `Arc<str>` keys (the inline size of an `Id`;
/// the key's text is counted apart): counted in every weight so that the byte
/// budget covers what the store really holds.
const STORE_OVERHEAD: usize = 272;

/// Keeps a value while its longest-kept variant is usable.
struct KeepFor {
    keep_stale: Duration,
}

impl KeepFor {
    fn keep(&self, value: &Variants) -> Duration {
        value
            .entries()
            .iter()
            .map(|e| e.time_to_keep(self.keep_stale))
            .max()
            .unwrap_or_default()
    }
}

impl Expiry<Id, Variants> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Id,
        value: &Variants,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.keep(value))
    }

    fn expire_after_update(
        &self,
        _key: &Id,
        value: &Variants,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.keep(value))
    }
}

/// Stored responses by primary key, bounded in bytes.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    cache: moka::sync::Cache<Id, Variants>,
    /// The hash's key, random per store, so that which URLs collide cannot be
    /// known from outside.
    seed: u64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.cache.entry_count())
            .field("weighted_bytes", &self.cache.weighted_size())
            .finish()
    }
}

impl MemoryStore {
    /// A store holding at most `max_bytes` (key, header fields, body, the entry
    /// and moka's bookkeeping).
    pub(crate) fn new(max_bytes: u64, keep_stale: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Id, value: &Variants| value.weight())
            .expire_after(KeepFor { keep_stale })
            .build();
        let seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        MemoryStore { cache, seed }
    }

    fn id(&self, key: &str) -> Id {
        xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), self.seed)
    }

    /// The stored response for `key` whose secondary key matches `request`.
    #[inline]
    pub(crate) fn get(&self, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let variants = self.cache.get(&self.id(key))?;
        if variants.key() != key {
            return None;
        }
        match variants {
            Variants::One { entry, .. } => entry.vary.matches(request).then_some(entry),
            Variants::Many(many) => many
                .entries
                .iter()
                .find(|entry| entry.vary.matches(request))
                .cloned(),
        }
    }

    /// Stores `entry` under `key`, replacing the variant with the same secondary key.
    pub(crate) fn put(&self, key: &str, entry: Arc<Entry>) {
        let id = self.id(key);
        let mut entries: Vec<Arc<Entry>> = match self.cache.get(&id) {
            Some(old) if old.key() == key => old
                .entries()
                .iter()
                .filter(|e| e.vary != entry.vary)
                .cloned()
                .collect(),
            // Nothing stored, or another URL with the same hash: replaced.
            _ => Vec::new(),
        };
        let value = if entries.is_empty() {
            Variants::One {
                key: Arc::from(key),
                entry,
            }
        } else {
            if entries.len() >= MAX_VARIANTS {
                entries.remove(0);
            }
            entries.push(entry);
            Variants::Many(Arc::new(Many {
                key: Box::from(key),
                entries: entries.into_boxed_slice(),
            }))
        };
        self.cache.insert(id, value);
    }

    /// Forgets every variant under `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        self.cache.invalidate(&self.id(key));
    }

    /// Runs moka's pending maintenance (evictions, expiry) now.
    pub(crate) fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks();
    }

    /// The weighted size of everything stored, in bytes.
    pub(crate) fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// How many URLs have a stored response.
    pub(crate) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Freshness;
    use crate::cache::policy::Mode;
    use bytes::Bytes;
    use http::{StatusCode, Version};
    use std::time::SystemTime;

    fn entry() -> Arc<Entry> {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("max-age=60"),
        );
        let now = SystemTime::now();
        let freshness = Freshness {
            mode: Mode::Shared,
            max_heuristic: Duration::ZERO,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
        };
        Arc::new(Entry::new(
            StatusCode::OK,
            Version::HTTP_11,
            headers,
            Bytes::from_static(b"body"),
            &HeaderMap::new(),
            now,
            now,
            None,
            &freshness,
        ))
    }

    #[test]
    fn serves_a_stored_url_and_nothing_for_another() {
        let store = MemoryStore::new(1 << 20, Duration::ZERO);
        store.put("http://x/a", entry());
        assert!(store.get("http://x/a", &HeaderMap::new()).is_some());
        assert!(store.get("http://x/b", &HeaderMap::new()).is_none());
    }

    #[test]
    fn a_url_whose_hash_collides_is_not_served_the_others_response() {
        let store = MemoryStore::new(1 << 20, Duration::ZERO);
        // What a collision leaves: the hash of one URL holding another's variants.
        let variants = Variants::One {
            key: Arc::from("http://x/b"),
            entry: entry(),
        };
        store.cache.insert(store.id("http://x/a"), variants);
        assert!(store.get("http://x/a", &HeaderMap::new()).is_none());

        // Storing the URL replaces the other's variants instead of joining them.
        store.put("http://x/a", entry());
        let stored = store.cache.get(&store.id("http://x/a")).unwrap();
        assert_eq!(stored.key(), "http://x/a");
        assert_eq!(stored.entries().len(), 1);
    }
}
