//! Request collapsing: one upstream request per key at a time.
//!
//! The first miss for a key becomes the leader and goes upstream; later misses for
//! the same key park on a `watch` channel (no polling) until the leader's response
//! is stored or turns out uncacheable, or until their wait times out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::entry::Entry;

/// How a leader's request ended, as its waiters see it.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Still in flight.
    Pending,
    /// The response was stored: here it is, so a waiter needs no store lookup
    /// (and none at all where the only store is remote and written in the
    /// background).
    Stored(Arc<Entry>),
    /// The response could not be stored, the request failed, or the leader went
    /// away: go upstream yourself.
    Released,
}

/// The keys with a request in flight, each with the channel its waiters park
/// on, made when the first waiter comes (most flights have none).
#[derive(Debug, Default)]
pub(crate) struct Inflight {
    keys: Mutex<HashMap<Arc<str>, Option<watch::Sender<Outcome>>>>,
}

/// What a miss does.
pub(crate) enum Role {
    /// Go upstream and report through the guard.
    Leader(Leader),
    /// Wait for the leader.
    Waiter(watch::Receiver<Outcome>),
}

impl Inflight {
    /// Joins the request for `key`, leading it when none is in flight.
    pub(crate) fn join(self: &Arc<Self>, key: &Arc<str>) -> Role {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = keys.get_mut(key) {
            let sender = sender.get_or_insert_with(|| watch::channel(Outcome::Pending).0);
            return Role::Waiter(sender.subscribe());
        }
        keys.insert(key.clone(), None);
        Role::Leader(Leader {
            inflight: self.clone(),
            key: key.clone(),
            done: false,
        })
    }

    /// How many keys have a request in flight.
    pub(crate) fn len(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many requests are parked behind one in flight.
    pub(crate) fn waiting(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .flatten()
            .map(watch::Sender::receiver_count)
            .sum()
    }
}

/// The leader's duty to report; reports [`Outcome::Released`] if dropped first.
#[derive(Debug)]
pub(crate) struct Leader {
    inflight: Arc<Inflight>,
    key: Arc<str>,
    done: bool,
}

impl Leader {
    /// Ends the flight with `outcome` and wakes every waiter.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.report(outcome);
    }

    fn report(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let sender = self
            .inflight
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key)
            .flatten();
        if let Some(sender) = sender {
            sender.send_replace(outcome);
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.report(Outcome::Released);
    }
}
