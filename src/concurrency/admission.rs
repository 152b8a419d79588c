//! The lock-free counts behind a gate: requests in flight, the limit, and how
//! many wait in line.
//!
//! The common case, room under the limit and nobody waiting, costs one
//! compare-and-swap to admit and one subtraction to release, with no lock and
//! no fence. The line itself sits behind the gate's mutex. Whether anyone waits
//! is a flag in the same word as the in-flight count, so the handshake between
//! the two is a matter of one atomic location: a request about to wait in an
//! empty line sets the flag *before* it checks for room one last time, and a
//! releaser's subtraction returns the flag together with the count it freed.
//! Read-modify-writes of one location are totally ordered, so either the
//! releaser sees the flag and hands its slot on, or the last check sees the
//! freed slot: a freed slot is never missed by a waiter. A request that finds
//! others already waiting joins them without taking a slot: every release since
//! the flag was set hands its slot to the line.
//!
//! A release that finds the flag set then asks the gate to hand slots on; it no
//! longer holds a slot by then, so the counts may already serve another gate,
//! which is why handing on only ever grants what room there is, and asking a
//! gate that has nobody waiting does nothing. The same word carries
//! [`RETIRED`], set when the gate is dropped; whichever of the gate's drop and
//! the last release comes second sees both the flag and an empty count, and it
//! alone hands the counts back for reuse. The `loom` models at the end check
//! all of it on every interleaving
//! (`RUSTFLAGS="--cfg tower_toolbox_loom" cargo test --release --lib admission`).

#[cfg(tower_toolbox_loom)]
use loom::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
#[cfg(not(tower_toolbox_loom))]
use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};

use crate::clock::Timestamp;

/// The bit of [`Admission::state`] set while the line is not empty.
const WAITING: usize = 1 << (usize::BITS - 1);

/// The bit of [`Admission::state`] set once the gate is gone.
const RETIRED: usize = 1 << (usize::BITS - 2);

/// The bits of [`Admission::state`] that count requests in flight.
const IN_FLIGHT: usize = !(WAITING | RETIRED);

/// What a permit's lock-free release found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Released {
    /// The slot was given back; this many remain in flight.
    Done(usize),
    /// The slot was the last one of a retired gate: the counts may be reused.
    Last,
    /// The slot was given back while requests wait: the gate must hand slots
    /// on under its lock.
    Waiting,
}

#[derive(Debug)]
pub(crate) struct Admission {
    /// Requests in flight (the low bits) and [`WAITING`] while anyone waits.
    state: AtomicUsize,
    limit: AtomicUsize,
    /// The line's length, for reading only: the flag in `state` is what the
    /// handshake relies on.
    waiting: AtomicUsize,
    /// Which priority classes have waiters (bit `c` for class `c`), for
    /// reading only.
    classes: AtomicUsize,
    /// When the line last went from empty to busy, in nanoseconds on the
    /// gate's clock, for reading only.
    busy_since: AtomicU64,
}

impl Admission {
    pub(crate) fn new(limit: usize) -> Self {
        Admission {
            state: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            waiting: AtomicUsize::new(0),
            classes: AtomicUsize::new(0),
            busy_since: AtomicU64::new(0),
        }
    }

    /// Takes a slot if nobody waits and the limit has room; returns the number
    /// in flight, this request included.
    #[inline]
    pub(crate) fn try_take_first(&self) -> Option<usize> {
        let limit = self.limit.load(Acquire);
        let mut current = self.state.load(Acquire);
        loop {
            // A set flag fails the check whatever the limit.
            if (current & WAITING) != 0 || current >= limit {
                return None;
            }
            match self
                .state
                .compare_exchange_weak(current, current + 1, AcqRel, Acquire)
            {
                Ok(_) => return Some(current + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes a slot if the limit has room, whether or not anyone waits.
    #[inline]
    pub(crate) fn try_take(&self) -> Option<usize> {
        let limit = self.limit.load(Acquire);
        let mut current = self.state.load(Acquire);
        loop {
            let in_flight = current & IN_FLIGHT;
            if in_flight >= limit {
                return None;
            }
            match self
                .state
                .compare_exchange_weak(current, current + 1, AcqRel, Acquire)
            {
                Ok(_) => return Some(in_flight + 1),
                Err(actual) => current = actual,
            }
        }
    }

    /// Takes a slot whatever the limit (a partition claiming its share). Only
    /// under the gate's lock.
    #[inline]
    pub(crate) fn force_take(&self) -> usize {
        (self.state.fetch_add(1, AcqRel) & IN_FLIGHT) + 1
    }

    /// Gives a slot back while the gate lives. Returns whether requests wait,
    /// in which case the caller must take the lock and hand the slot on.
    #[inline]
    pub(crate) fn give_back(&self) -> bool {
        (self.state.fetch_sub(1, AcqRel) & WAITING) != 0
    }

    /// A permit's release: gives its slot back, and says what else it takes.
    #[inline]
    pub(crate) fn release(&self) -> Released {
        let previous = self.state.fetch_sub(1, AcqRel);
        if (previous & WAITING) != 0 {
            Released::Waiting
        } else if previous == RETIRED | 1 {
            // Nobody waits once the gate is gone, so the flag is clear here.
            Released::Last
        } else {
            Released::Done((previous & IN_FLIGHT) - 1)
        }
    }

    /// A permit's release once its gate is gone (nobody can wait then).
    /// Returns whether the counts may be reused.
    pub(crate) fn release_orphan(&self) -> bool {
        self.state.fetch_sub(1, AcqRel) == RETIRED | 1
    }

    /// Marks the gate gone. Returns whether nothing is in flight, in which case
    /// the counts may be reused at once; otherwise the last release says so.
    pub(crate) fn retire(&self) -> bool {
        (self.state.fetch_or(RETIRED, AcqRel) & IN_FLIGHT) == 0
    }

    /// Counts for a new gate. Only on counts nobody else holds.
    pub(crate) fn reset(&self, limit: usize) {
        self.state.store(0, Release);
        self.limit.store(limit, Release);
        self.waiting.store(0, Release);
        self.classes.store(0, Release);
        self.busy_since.store(0, Release);
    }

    /// Publishes which classes have waiters and when the line became busy.
    /// Only under the gate's lock.
    pub(crate) fn set_shape(&self, classes: usize, busy_since: Timestamp) {
        self.classes.store(classes, Release);
        self.busy_since.store(busy_since.as_nanos(), Release);
    }

    /// Whether, when last published, anyone of a class after `class` waited.
    #[inline]
    pub(crate) fn waiting_after(&self, class: usize) -> bool {
        (self.classes.load(Acquire) >> (class + 1)) != 0
    }

    /// When the line last became busy, as last published.
    #[inline]
    pub(crate) fn busy_since(&self) -> Timestamp {
        Timestamp::from_nanos(self.busy_since.load(Acquire))
    }

    /// Publishes the line's length. Only under the gate's lock, and before the
    /// last check for room when a request is about to wait.
    pub(crate) fn set_waiting(&self, waiting: usize) {
        self.waiting.store(waiting, Release);

        // Only lock holders change the flag, so this read of it is current.
        let flagged = (self.state.load(Relaxed) & WAITING) != 0;
        if waiting > 0 && !flagged {
            self.state.fetch_or(WAITING, AcqRel);
        } else if waiting == 0 && flagged {
            self.state.fetch_and(IN_FLIGHT, AcqRel);
        }
    }

    /// Sets the limit. Only under the gate's lock.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Release);
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.state.load(Acquire) & IN_FLIGHT
    }

    #[inline]
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Acquire)
    }

    #[inline]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Acquire)
    }
}

#[cfg(all(test, tower_toolbox_loom))]
mod tests {
    use super::{Admission, Released};
    use loom::sync::{Arc, Mutex};
    use loom::thread;

    /// What the model's line holds: how many wait, and how many were handed a
    /// slot.
    #[derive(Default)]
    struct Line {
        queued: usize,
        granted: usize,
    }

    /// The arrival's side, the way the gate does it: try to take a slot; failing
    /// that, under the lock, take one only if nobody waits; else join the line,
    /// publishing its new length, and look once more only if the line was empty.
    fn take_or_wait(admission: &Admission, line: &Mutex<Line>) -> bool {
        if admission.try_take_first().is_some() {
            return true;
        }
        let mut line = line.lock().unwrap();
        let was_empty = line.queued == 0;
        if was_empty && admission.try_take().is_some() {
            return true;
        }
        admission.set_waiting(line.queued + 1);
        if was_empty && admission.try_take().is_some() {
            admission.set_waiting(line.queued);
            return true;
        }
        line.queued += 1;
        false
    }

    /// The releaser's side, the way a permit does it: give the slot back and,
    /// if someone waits, hand a slot on under the lock.
    fn release(admission: &Admission, line: &Mutex<Line>) {
        if admission.release() == Released::Waiting {
            let mut line = line.lock().unwrap();
            if line.queued > 0 && admission.try_take().is_some() {
                line.queued -= 1;
                line.granted += 1;
                admission.set_waiting(line.queued);
            }
        }
    }

    #[test]
    fn a_freed_slot_always_reaches_the_first_waiter() {
        loom::model(|| {
            let admission = Arc::new(Admission::new(1));
            let line = Arc::new(Mutex::new(Line::default()));
            assert_eq!(admission.try_take_first(), Some(1));

            let releaser = {
                let (admission, line) = (admission.clone(), line.clone());
                thread::spawn(move || release(&admission, &line))
            };
            let took = take_or_wait(&admission, &line);
            releaser.join().unwrap();

            let line = line.lock().unwrap();
            assert!(
                took || line.granted == 1,
                "the waiter was left in line with a free slot"
            );
            assert_eq!(admission.in_flight(), 1);
        });
    }

    #[test]
    fn an_arrival_behind_a_waiter_never_takes_its_slot_nor_strands_it() {
        loom::model(|| {
            // One request in flight and one already waiting for its slot.
            let admission = Arc::new(Admission::new(1));
            let line = Arc::new(Mutex::new(Line::default()));
            assert_eq!(admission.try_take_first(), Some(1));
            {
                let mut line = line.lock().unwrap();
                admission.set_waiting(1);
                line.queued = 1;
            }

            let releaser = {
                let (admission, line) = (admission.clone(), line.clone());
                thread::spawn(move || release(&admission, &line))
            };
            let took = take_or_wait(&admission, &line);
            releaser.join().unwrap();

            let line = line.lock().unwrap();
            assert!(!took, "the arrival jumped the line");
            assert_eq!(line.granted, 1, "the freed slot did not reach the waiter");
            assert_eq!(line.queued, 1);
            assert_eq!(admission.in_flight(), 1);
        });
    }

    #[test]
    fn exactly_one_of_the_gates_drop_and_the_last_release_reuses_the_counts() {
        loom::model(|| {
            let admission = Arc::new(Admission::new(2));
            assert_eq!(admission.try_take_first(), Some(1));
            assert_eq!(admission.try_take_first(), Some(2));

            let releasers: Vec<_> = (0..2)
                .map(|_| {
                    let admission = admission.clone();
                    thread::spawn(move || admission.release() == Released::Last)
                })
                .collect();
            let retired_empty = admission.retire();
            let last = releasers
                .into_iter()
                .map(|releaser| releaser.join().unwrap())
                .filter(|&last| last)
                .count();
            assert_eq!(
                usize::from(retired_empty) + last,
                1,
                "the counts must be handed back exactly once"
            );
            assert_eq!(admission.in_flight(), 0);
        });
    }

    #[test]
    fn racing_takers_never_pass_the_limit() {
        loom::model(|| {
            let admission = Arc::new(Admission::new(1));
            let other = {
                let admission = admission.clone();
                thread::spawn(move || admission.try_take_first().is_some())
            };
            let mine = admission.try_take_first().is_some();
            let theirs = other.join().unwrap();
            assert!(
                mine ^ theirs,
                "exactly one of two takers gets the only slot"
            );
            assert_eq!(admission.in_flight(), 1);
        });
    }
}
