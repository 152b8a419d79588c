//! The header fields of a stored response, compact.
//!
//! A `HeaderMap` spends about a hundred bytes per field on its hash table, and
//! the values of a response read from the network are slices of the connection's
//! receive buffer, which they keep alive. A stored response lives long, so its
//! fields are kept as a boxed slice of name and value, the values copied into
//! one buffer of their exact size. A hit rebuilds a `HeaderMap` from them: the
//! same two allocations as cloning a stored map, and no copy of a value (each is
//! a shared slice of the buffer).

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields in their stored order, several values for one name in a row.
#[derive(Clone, Debug, Default)]
pub(crate) struct Fields {
    fields: Box<[(HeaderName, HeaderValue)]>,
}

impl Fields {
    /// The fields of `headers` except `skip`, their values copied into one buffer.
    pub(crate) fn new(headers: &HeaderMap, skip: &HeaderName) -> Self {
        let kept = || headers.iter().filter(|(name, _)| *name != skip);
        let mut buffer = BytesMut::with_capacity(kept().map(|(_, value)| value.len()).sum());
        for (_, value) in kept() {
            buffer.put_slice(value.as_bytes());
        }
        let buffer = buffer.freeze();
        let mut at = 0;
        let fields = kept()
            .map(|(name, value)| {
                let bytes = buffer.slice(at..at + value.len());
                at += value.len();
                let mut copy = HeaderValue::from_maybe_shared(bytes)
                    .expect("the bytes of a header value make a header value");
                copy.set_sensitive(value.is_sensitive());
                (name.clone(), copy)
            })
            .collect();
        Fields { fields }
    }

    /// A header map of the fields, with room for `extra` more.
    #[inline]
    pub(crate) fn to_map(&self, extra: usize) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.fields.len() + extra);
        for (name, value) in self.fields.iter() {
            map.append(name, value.clone());
        }
        map
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// Every value of `name`, in order.
    pub(crate) fn get_all<'a>(
        &'a self,
        name: &'a HeaderName,
    ) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, value)| value)
    }

    /// Whether a field named `name` is stored.
    pub(crate) fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every field, in order.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.fields.iter().map(|(name, value)| (name, value))
    }

    /// How many field lines are stored.
    #[cfg(feature = "redis")]
    pub(crate) fn len(&self) -> usize {
        self.fields.len()
    }

    /// Bytes held beyond the struct itself: the slice, the values' buffer and
    /// its shared header, and the names' text.
    pub(crate) fn heap_size(&self) -> usize {
        let slots = std::mem::size_of_val::<[(HeaderName, HeaderValue)]>(&self.fields);
        let values: usize = self.fields.iter().map(|(_, value)| value.len()).sum();
        // Standard names are static and hold nothing; others hold their text.
        // Counting every name errs on the safe side of the byte budget.
        let names: usize = self
            .fields
            .iter()
            .map(|(name, _)| name.as_str().len())
            .sum();
        slots + values + names + SHARED_BUFFER
    }
}

/// What `bytes` adds to a buffer once it is shared: its reference count and
/// capacity (three words).
pub(crate) const SHARED_BUFFER: usize = 3 * std::mem::size_of::<usize>();

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{AGE, CACHE_CONTROL, SET_COOKIE};

    #[test]
    fn keeps_order_and_repeated_values_without_the_skipped_field() {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.insert(AGE, HeaderValue::from_static("3"));
        headers.append(SET_COOKIE, HeaderValue::from_static("a=1"));
        headers.append(SET_COOKIE, HeaderValue::from_static("b=2"));
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        headers.insert("x-secret", secret);

        let fields = Fields::new(&headers, &AGE);
        let map = fields.to_map(1);
        assert_eq!(map.len(), 4);
        assert!(!map.contains_key(AGE));
        assert_eq!(map[CACHE_CONTROL], "max-age=60");
        let cookies: Vec<_> = map.get_all(SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert!(map["x-secret"].is_sensitive());
        assert_eq!(fields.get_all(&SET_COOKIE).count(), 2);
        assert_eq!(fields.get(&CACHE_CONTROL).unwrap(), "max-age=60");
    }

    #[test]
    fn values_share_one_exact_buffer() {
        let mut headers = HeaderMap::new();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        headers.insert("x-tag", HeaderValue::from_static("abc"));
        let fields = Fields::new(&headers, &AGE);
        let values: Vec<&HeaderValue> = fields.iter().map(|(_, v)| v).collect();
        let first = values[0].as_bytes().as_ptr() as usize;
        let second = values[1].as_bytes().as_ptr() as usize;
        assert_eq!(second, first + "max-age=60".len());
    }
}
