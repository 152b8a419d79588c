//! The in-memory store: moka, weighed in bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use moka::Expiry;

use super::entry::Entry;

/// The most variants (distinct `Vary` selections) kept per URL; the oldest goes.
const MAX_VARIANTS: usize = 16;

/// The stored variants of one URL: most URLs have one, held with no list around
/// it.
#[derive(Clone, Debug)]
pub(crate) enum Variants {
    One(Arc<Entry>),
    Many(Arc<[Arc<Entry>]>),
}

impl Variants {
    fn entries(&self) -> &[Arc<Entry>] {
        match self {
            Variants::One(entry) => std::slice::from_ref(entry),
            Variants::Many(entries) => entries,
        }
    }

    fn weight(&self, key: &str) -> u32 {
        let list = match self {
            Variants::One(_) => 0,
            Variants::Many(entries) => {
                2 * std::mem::size_of::<usize>() + std::mem::size_of_val::<[Arc<Entry>]>(entries)
            }
        };
        let bytes = STORE_OVERHEAD
            + key.len()
            + 2 * std::mem::size_of::<usize>()
            + list
            + self.entries().iter().map(|e| e.weight()).sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

/// moka's own bytes per stored URL (its entry, deque and timer nodes, hash table
/// slot), as `benches/cache.rs` measures it for a sync cache with a weigher and
/// per-entry expiry holding 10,000 keys: counted in every weight so that the
/// byte budget covers what the store really holds.
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

impl Expiry<Arc<str>, Variants> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Variants,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(self.keep(value))
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
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
    cache: moka::sync::Cache<Arc<str>, Variants>,
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
            .weigher(|key: &Arc<str>, value: &Variants| value.weight(key))
            .expire_after(KeepFor { keep_stale })
            .build();
        MemoryStore { cache }
    }

    /// The stored response for `key` whose secondary key matches `request`.
    #[inline]
    pub(crate) fn get(&self, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        match self.cache.get(key)? {
            Variants::One(entry) => entry.vary.matches(request).then_some(entry),
            Variants::Many(entries) => entries
                .iter()
                .find(|entry| entry.vary.matches(request))
                .cloned(),
        }
    }

    /// Stores `entry` under `key`, replacing the variant with the same secondary key.
    pub(crate) fn put(&self, key: &str, entry: Arc<Entry>) {
        let mut entries: Vec<Arc<Entry>> = match self.cache.get(key) {
            Some(old) => old
                .entries()
                .iter()
                .filter(|e| e.vary != entry.vary)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        let value = if entries.is_empty() {
            Variants::One(entry)
        } else {
            if entries.len() >= MAX_VARIANTS {
                entries.remove(0);
            }
            entries.push(entry);
            Variants::Many(Arc::from(entries))
        };
        self.cache.insert(Arc::from(key), value);
    }

    /// Forgets every variant under `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
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
