//! The Redis tier: stored responses shared by every instance.
//!
//! One value per URL (the variant stored last), in a compact binary encoding,
//! with Redis' own expiry set to how long the response stays usable. Reads wait
//! at most the store's timeout; a slow, absent or garbled answer is a miss.
//! Writes and deletes run in the background.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::entry::Entry;
use super::shared::Shared;
use super::vary::Vary;
use crate::clock::Clock;

const MAGIC: &[u8; 4] = b"TTC1";

impl<C: Clock> Shared<C> {
    /// The stored response for `key` matching `request` in Redis, if it answers
    /// in time.
    pub(crate) async fn get_remote(&self, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let store = self.config.redis.as_ref()?;
        let redis_key = store.key("cache", key);
        let result = store
            .call(|mut conn| async move {
                redis::cmd("GET")
                    .arg(&redis_key)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await;
        let bytes = match result {
            Ok(bytes) => bytes?,
            Err(error) => {
                tracing::debug!(%key, %error, "redis cache read failed; treated as a miss");
                return None;
            }
        };
        let entry = decode(Bytes::from(bytes), &self.config.freshness)?;
        entry.vary.matches(request).then(|| Arc::new(entry))
    }

    /// Writes `entry` to Redis in the background.
    pub(crate) fn put_remote(&self, key: &str, entry: &Entry) {
        let Some(store) = self.config.redis.clone() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keep = entry.time_to_keep(self.config.keep_stale);
        let millis = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        let redis_key = store.key("cache", key);
        let value = encode(entry);
        handle.spawn(async move {
            let result = store
                .call(|mut conn| async move {
                    redis::cmd("SET")
                        .arg(&redis_key)
                        .arg(value.as_ref())
                        .arg("PX")
                        .arg(millis)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
            if let Err(error) = result {
                tracing::debug!(%error, "redis cache write failed");
            }
        });
    }

    /// Deletes `key` from Redis in the background.
    pub(crate) fn invalidate_remote(&self, key: &str) {
        let Some(store) = self.config.redis.clone() else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let redis_key = store.key("cache", key);
        handle.spawn(async move {
            let result = store
                .call(|mut conn| async move {
                    redis::cmd("DEL")
                        .arg(&redis_key)
                        .query_async::<()>(&mut conn)
                        .await
                })
                .await;
            if let Err(error) = result {
                tracing::debug!(%error, "redis cache delete failed");
            }
        });
    }
}

fn nanos(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    out.put_slice(bytes);
}

/// Encodes an entry: magic, status, times, secondary key, header fields, body.
pub(crate) fn encode(entry: &Entry) -> Bytes {
    let mut out = BytesMut::with_capacity(entry.weight() + 64);
    out.put_slice(MAGIC);
    out.put_u16(entry.status.as_u16());
    out.put_u64(nanos(entry.response_time));
    out.put_u64(u64::try_from(entry.initial_age.as_nanos()).unwrap_or(u64::MAX));
    out.put_u32(u32::try_from(entry.vary.fields().len()).unwrap_or(0));
    for (name, value) in entry.vary.fields() {
        put_bytes(&mut out, name.as_str().as_bytes());
        match value {
            Some(value) => {
                out.put_u8(1);
                put_bytes(&mut out, value.as_bytes());
            }
            None => out.put_u8(0),
        }
    }
    out.put_u32(u32::try_from(entry.headers.len()).unwrap_or(0));
    for (name, value) in entry.headers.iter() {
        put_bytes(&mut out, name.as_str().as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    put_bytes(&mut out, &entry.body);
    out.freeze()
}

fn take_bytes(input: &mut Bytes) -> Option<Bytes> {
    if input.remaining() < 4 {
        return None;
    }
    let len = input.get_u32() as usize;
    (input.remaining() >= len).then(|| input.split_to(len))
}

/// Decodes an entry; `None` for anything malformed.
pub(crate) fn decode(mut input: Bytes, freshness: &super::entry::Freshness) -> Option<Entry> {
    if input.remaining() < 4 + 2 + 8 + 8 + 4 || &input[..4] != MAGIC {
        return None;
    }
    input.advance(4);
    let status = StatusCode::from_u16(input.get_u16()).ok()?;
    let response_time = UNIX_EPOCH + Duration::from_nanos(input.get_u64());
    let initial_age = Duration::from_nanos(input.get_u64());
    let vary_len = input.get_u32() as usize;
    let mut fields = Vec::with_capacity(vary_len.min(64));
    for _ in 0..vary_len {
        let name = HeaderName::from_bytes(&take_bytes(&mut input)?).ok()?;
        if input.remaining() < 1 {
            return None;
        }
        let value = match input.get_u8() {
            1 => Some(String::from_utf8(take_bytes(&mut input)?.to_vec()).ok()?),
            _ => None,
        };
        fields.push((name, value));
    }
    if input.remaining() < 4 {
        return None;
    }
    let header_len = input.get_u32() as usize;
    let mut headers = HeaderMap::with_capacity(header_len.min(256));
    for _ in 0..header_len {
        let name = HeaderName::from_bytes(&take_bytes(&mut input)?).ok()?;
        let value = HeaderValue::from_maybe_shared(take_bytes(&mut input)?).ok()?;
        headers.append(name, value);
    }
    let body = take_bytes(&mut input)?;
    let mut entry = Entry::from_parts(
        status,
        headers,
        body,
        Vary::from_fields(fields),
        response_time,
        response_time,
        freshness,
    );
    entry.initial_age = initial_age;
    Some(entry)
}
