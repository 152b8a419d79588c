//! The in-memory store: moka, weighed in bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::HeaderMap;
use moka::Expiry;

use super::entry::Entry;

/// The most variants (distinct `Vary` selections) kept per URL; the oldest goes.
const MAX_VARIANTS: usize = 16;

/// The stored variants of one URL.
#[derive(Debug)]
pub(crate) struct Variants {
    entries: Vec<Arc<Entry>>,
    /// How long the store keeps this value from its last write.
    keep: Duration,
}

impl Variants {
    fn weight(&self, key: &str) -> u32 {
        let bytes = key.len()
            + std::mem::size_of::<Self>()
            + self
                .entries
                .iter()
                .map(|e| e.weight() + std::mem::size_of::<Arc<Entry>>())
                .sum::<usize>();
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }
}

struct KeepFor;

impl Expiry<Arc<str>, Arc<Variants>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<Variants>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.keep)
    }

    fn expire_after_update(
        &self,
        _key: &Arc<str>,
        value: &Arc<Variants>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.keep)
    }
}

/// Stored responses by primary key, bounded in bytes.
#[derive(Clone)]
pub(crate) struct MemoryStore {
    cache: moka::sync::Cache<Arc<str>, Arc<Variants>>,
    keep_stale: Duration,
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
    /// A store holding at most `max_bytes` (key, headers, body and bookkeeping).
    pub(crate) fn new(max_bytes: u64, keep_stale: Duration) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &Arc<str>, value: &Arc<Variants>| value.weight(key))
            .expire_after(KeepFor)
            .build();
        MemoryStore { cache, keep_stale }
    }

    /// The stored response for `key` whose secondary key matches `request`.
    #[inline]
    pub(crate) fn get(&self, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let variants = self.cache.get(key)?;
        variants
            .entries
            .iter()
            .find(|entry| entry.vary.matches(request))
            .cloned()
    }

    /// Stores `entry` under `key`, replacing the variant with the same secondary key.
    pub(crate) fn put(&self, key: &str, entry: Arc<Entry>) {
        let mut entries: Vec<Arc<Entry>> = match self.cache.get(key) {
            Some(old) => old
                .entries
                .iter()
                .filter(|e| e.vary != entry.vary)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if entries.len() >= MAX_VARIANTS {
            entries.remove(0);
        }
        entries.push(entry);
        let keep = entries
            .iter()
            .map(|e| e.time_to_keep(self.keep_stale))
            .max()
            .unwrap_or_default();
        self.cache
            .insert(Arc::from(key), Arc::new(Variants { entries, keep }));
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
