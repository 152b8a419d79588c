//! What a gate keeps under its lock: the waiting line (first in, first out or
//! CoDel, in priority classes), the partitions' shares, and the limit
//! algorithm.
//!
//! The line's length and shape are published in the gate's [`Admission`]
//! whenever they change, for the decisions made without the lock.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Duration;

use super::admission::Admission;
use crate::clock::Timestamp;

/// Number of priority classes a queue keeps apart; class 0 is served first.
pub(crate) const CLASSES: usize = 3;

/// How the waiting line orders and drops waiters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Discipline {
    /// First come, first served; a waiter gives up after `timeout`.
    Fifo { timeout: Duration },
    /// Controlled delay: once the line has not been empty for `interval`, waiters
    /// older than `target` are shed and the newest is served first.
    #[cfg_attr(not(feature = "shed"), allow(dead_code))]
    CoDel {
        target: Duration,
        interval: Duration,
    },
}

/// Everything a gate changes only under its lock.
pub(super) struct State<A> {
    pub(super) algorithm: A,
    pub(super) partitions: Vec<Share>,
    pub(super) line: Line,
    pub(super) next_id: u64,
    /// Waiters that were granted a permit or shed but have not yet seen it.
    pub(super) decided: Vec<(u64, Decision)>,
}

/// One partition's share of the limit, and how much of it is in use.
pub(super) struct Share {
    pub(super) fraction: f64,
    pub(super) limit: usize,
    pub(super) in_flight: usize,
}

/// The waiters, one first-in, first-out queue per priority class.
pub(super) struct Line {
    pub(super) classes: [VecDeque<Waiter>; CLASSES],
    pub(super) len: usize,
    pub(super) capacity: usize,
    pub(super) discipline: Discipline,
    /// When the line last went from empty to busy.
    pub(super) busy_since: Timestamp,
}

/// A request in line, as the gate sees it (its future holds a [`Wait`](super::permit::Wait)).
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) enqueued: Timestamp,
    pub(super) partition: usize,
    pub(super) waker: Option<Waker>,
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Decision {
    Admitted { in_flight: usize },
    Shed,
}

impl<A> State<A> {
    /// Publishes the line's length and shape for readers without the lock.
    pub(super) fn publish(&self, admission: &Admission) {
        admission.set_waiting(self.line.len);
        let classes = self
            .line
            .classes
            .iter()
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .fold(0, |mask, (class, _)| mask | 1 << class);
        admission.set_shape(classes, self.line.busy_since);
    }

    /// Takes a slot for a request of `partition` if the limit, or the
    /// partition's share, has room.
    pub(super) fn try_admit(&mut self, admission: &Admission, partition: usize) -> Option<usize> {
        if self.partitions.is_empty() {
            return admission.try_take();
        }
        // Partitioned gates count under this lock only, so reading then adding is
        // not a race. A partition below its share is admitted even when others
        // have borrowed the rest of the limit.
        let below_share = self
            .partitions
            .get(partition)
            .is_some_and(|share| share.in_flight < share.limit);
        if admission.in_flight() >= admission.limit() && !below_share {
            return None;
        }
        if let Some(share) = self.partitions.get_mut(partition) {
            share.in_flight += 1;
        }
        Some(admission.force_take())
    }

    pub(super) fn could_admit(&self, admission: &Admission, partition: usize) -> bool {
        admission.in_flight() < admission.limit()
            || self
                .partitions
                .get(partition)
                .is_some_and(|share| share.in_flight < share.limit)
    }

    pub(super) fn release_share(&mut self, partition: usize) {
        if let Some(share) = self.partitions.get_mut(partition) {
            share.in_flight -= 1;
        }
    }

    pub(super) fn resize_partitions(&mut self, limit: usize) {
        for share in &mut self.partitions {
            share.limit = ((limit as f64 * share.fraction).ceil() as usize).max(1);
        }
    }

    pub(super) fn overloaded(&self, now: Timestamp) -> Option<Duration> {
        match self.line.discipline {
            Discipline::CoDel { target, interval }
                if self.line.len > 0
                    && now.saturating_duration_since(self.line.busy_since) > interval =>
            {
                Some(target)
            }
            _ => None,
        }
    }

    /// Under CoDel overload, sheds every waiter older than the target. Returns
    /// how many.
    pub(super) fn shed_stale(
        &mut self,
        admission: &Admission,
        now: Timestamp,
        wake: &mut Vec<Waker>,
    ) -> u64 {
        let Some(target) = self.overloaded(now) else {
            return 0;
        };
        let mut shed = 0;
        for class in 0..CLASSES {
            // Waiters sit in arrival order, so the stale ones are at the front.
            while let Some(front) = self.line.classes[class].front() {
                if now.saturating_duration_since(front.enqueued) <= target {
                    break;
                }
                let waiter = self.line.classes[class].pop_front().expect("front exists");
                self.line.len -= 1;
                self.decide(waiter, Decision::Shed, wake);
                shed += 1;
            }
        }
        self.publish(admission);
        shed
    }

    /// Makes room for a waiter of `class` by shedding the newest waiter of the
    /// lowest class below it.
    pub(super) fn evict_below(
        &mut self,
        admission: &Admission,
        class: usize,
        wake: &mut Vec<Waker>,
    ) -> bool {
        for lower in (class + 1..CLASSES).rev() {
            if let Some(waiter) = self.line.classes[lower].pop_back() {
                self.line.len -= 1;
                self.publish(admission);
                self.decide(waiter, Decision::Shed, wake);
                return true;
            }
        }
        false
    }

    pub(super) fn decide(&mut self, waiter: Waiter, decision: Decision, wake: &mut Vec<Waker>) {
        self.decided.push((waiter.id, decision));
        if let Some(waker) = waiter.waker {
            wake.push(waker);
        }
    }

    /// Sheds stale waiters, then grants slots to waiters while the limit
    /// allows: higher classes first; oldest first, or newest first while CoDel
    /// sees a standing line. Returns how many were shed.
    pub(super) fn dispatch(
        &mut self,
        admission: &Admission,
        now: Timestamp,
        wake: &mut Vec<Waker>,
    ) -> u64 {
        if self.line.len == 0 {
            return 0;
        }
        let shed = self.shed_stale(admission, now, wake);
        let newest_first = self.overloaded(now).is_some();
        while let Some((class, index)) = self.next_waiter(admission, newest_first) {
            let partition = self.line.classes[class][index].partition;
            // A request arriving without the lock may have taken the slot first.
            let Some(in_flight) = self.try_admit(admission, partition) else {
                break;
            };
            let waiter = self.line.classes[class]
                .remove(index)
                .expect("index in range");
            self.line.len -= 1;
            self.publish(admission);
            self.decide(waiter, Decision::Admitted { in_flight }, wake);
        }
        shed
    }

    pub(super) fn next_waiter(
        &self,
        admission: &Admission,
        newest_first: bool,
    ) -> Option<(usize, usize)> {
        if self.partitions.is_empty() && admission.in_flight() >= admission.limit() {
            return None;
        }
        for (class, line) in self.line.classes.iter().enumerate() {
            let admissible = |waiter: &Waiter| self.could_admit(admission, waiter.partition);
            let found = if newest_first {
                line.iter().rposition(admissible)
            } else {
                line.iter().position(admissible)
            };
            if let Some(index) = found {
                return Some((class, index));
            }
        }
        None
    }

    pub(super) fn take_decision(&mut self, id: u64) -> Option<Decision> {
        let index = self.decided.iter().position(|(d, _)| *d == id)?;
        Some(self.decided.swap_remove(index).1)
    }

    pub(super) fn remove_waiter(&mut self, admission: &Admission, id: u64) -> bool {
        for line in &mut self.line.classes {
            if let Some(index) = line.iter().position(|w| w.id == id) {
                line.remove(index);
                self.line.len -= 1;
                self.publish(admission);
                return true;
            }
        }
        false
    }
}
