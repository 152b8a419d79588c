//! Admission: the count of requests in flight, the limit, and the waiting line.
//!
//! One `Gate` guards one limit (the whole service, or one key). The counts live
//! in an `Admission`, in the gate's `Core`, which permits point at: while there
//! is room and nobody waits, admitting and releasing touch only those atomics.
//! Everything else (the waiting line, partition shares, the limit algorithm:
//! see `line`) sits behind one mutex, held for a few dozen instructions and
//! never across an await; the line's length and shape are published beside the
//! counts, so that a full line refuses newcomers without it. Gates with partitions take the
//! lock for every admission and release, since shares are counted under it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Waker;
use std::time::Duration;

use super::algorithm::{LimitAlgorithm, Outcome, Sample};
pub(crate) use super::line::{Decision, Discipline};
use super::line::{Line, Share, State, Waiter};
pub(crate) use super::metrics::Metrics;
use super::permit::{Core, Slots};
pub(crate) use super::permit::{Permit, Wait};
use crate::clock::{Clock, Timestamp};

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The limit was reached and the layer does not queue.
    Full,
    /// The limit was reached and the waiting line was full.
    QueueFull,
    /// The request waited as long as it may.
    TimedOut,
    /// The request was dropped from the line to keep latency down.
    Shed,
}

/// The settings a gate is built from.
#[derive(Clone, Debug)]
pub(crate) struct GateConfig {
    /// Waiters the line holds; zero refuses at once when full.
    pub(crate) capacity: usize,
    pub(crate) discipline: Discipline,
    /// Each partition's share of the limit, in (0, 1]; empty for no partitions.
    pub(crate) shares: Vec<f64>,
}

pub(crate) struct Gate<A, C> {
    core: &'static Core,
    partitioned: bool,
    /// Whether the gate has a waiting line at all (a capacity above zero).
    queues: bool,
    /// The line's capacity and discipline, also kept in its state, read here
    /// without the lock.
    capacity: usize,
    discipline: Discipline,
    state: Mutex<State<A>>,
    clock: C,
    adaptive: bool,
    metrics: Metrics,
}

/// What [`Gate::acquire`] decided.
pub(crate) enum Acquire<C: Clock> {
    Admitted(Permit),
    Queued(Wait<C>),
    Refused(Refusal),
}

impl<A, C> Gate<A, C>
where
    A: LimitAlgorithm,
    C: Clock,
{
    pub(crate) fn new(algorithm: A, clock: C, config: &GateConfig, metrics: Metrics) -> Arc<Self> {
        let limit = algorithm.initial_limit().get();
        let adaptive = algorithm.is_adaptive();
        metrics.limit.set(limit as f64);
        let mut state = State {
            algorithm,
            partitions: config
                .shares
                .iter()
                .map(|&fraction| Share {
                    fraction,
                    limit: 0,
                    in_flight: 0,
                })
                .collect(),
            line: Line {
                classes: Default::default(),
                len: 0,
                capacity: config.capacity,
                discipline: config.discipline,
                busy_since: Timestamp::ZERO,
            },
            next_id: 0,
            decided: Vec::new(),
        };
        state.resize_partitions(limit);
        let gauge = metrics.has_gauges().then(|| metrics.in_flight.clone());
        let core = Core::lease(limit, gauge);
        Arc::new_cyclic(|gate: &Weak<Self>| {
            let slots: Weak<dyn Slots> = gate.clone();
            core.attach(slots);
            Gate {
                core,
                partitioned: !config.shares.is_empty(),
                queues: config.capacity > 0,
                capacity: config.capacity,
                discipline: config.discipline,
                state: Mutex::new(state),
                clock,
                adaptive,
                metrics,
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<A>> {
        // Every critical section leaves the state consistent before anything that
        // could panic, so a poisoned lock is still sound to use.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a request of `partition` and priority `class` now, queues it, or
    /// refuses it.
    #[inline]
    pub(crate) fn acquire(self: &Arc<Self>, partition: usize, class: usize) -> Acquire<C> {
        match self.try_acquire_now(partition) {
            Some(permit) => Acquire::Admitted(permit),
            None => self.acquire_contended(partition, class),
        }
    }

    /// The common case of [`acquire`](Self::acquire), room and nobody waiting,
    /// inlined into the caller so that it neither calls the slow path nor builds
    /// the large `Acquire`. `None` leaves the decision to
    /// [`acquire_contended`](Self::acquire_contended).
    #[inline]
    pub(crate) fn try_acquire_now(self: &Arc<Self>, partition: usize) -> Option<Permit> {
        if self.partitioned {
            return None;
        }
        let in_flight = self.core.admission.try_take_first()?;
        self.metrics.in_flight.set(in_flight as f64);
        Some(self.permit(partition, in_flight))
    }

    /// [`acquire`](Self::acquire) once [`try_acquire_now`](Self::try_acquire_now)
    /// found no room, or the gate is partitioned.
    #[inline(never)]
    pub(crate) fn acquire_contended(
        self: &Arc<Self>,
        partition: usize,
        class: usize,
    ) -> Acquire<C> {
        match self.refusal_without_lock(class) {
            Some(refusal) => Acquire::Refused(refusal),
            None => self.acquire_locked(partition, class),
        }
    }

    /// After [`try_acquire_now`](Self::try_acquire_now) found no room: the
    /// refusal of a request of `class` that needs no lock to decide (no line,
    /// or a full one with nobody to shed or evict), counted as a rejection.
    /// `None` leaves the decision to [`acquire_locked`](Self::acquire_locked).
    #[inline]
    pub(crate) fn refusal_without_lock(&self, class: usize) -> Option<Refusal> {
        if self.refuses_at_once() {
            return Some(Refusal::Full);
        }
        if self.full_line_refuses(class) {
            self.metrics.rejected.increment(1);
            return Some(Refusal::QueueFull);
        }
        None
    }

    /// Whether a request of `class` finds the line full with nobody to shed or
    /// evict for it, judged from the published line without the lock. `false`
    /// leaves the decision to [`acquire_locked`](Self::acquire_locked), which
    /// makes the same one under the lock: this only answers the common case
    /// of a standing, full line sooner. A waiter leaving just now may be missed,
    /// as if the request had come a moment earlier.
    #[inline]
    fn full_line_refuses(&self, class: usize) -> bool {
        let admission = &self.core.admission;
        if self.partitioned || admission.waiting() < self.capacity || admission.waiting_after(class)
        {
            return false;
        }
        match self.discipline {
            Discipline::Fifo { .. } => true,
            // Past the interval CoDel may shed stale waiters, making room.
            Discipline::CoDel { interval, .. } => {
                let busy = self
                    .clock
                    .now()
                    .saturating_duration_since(admission.busy_since());
                busy <= interval
            }
        }
    }

    /// After [`try_acquire_now`](Self::try_acquire_now) found no room: whether
    /// the request is refused ([`Refusal::Full`]) without taking the lock, which
    /// is counted as a rejection. Otherwise [`acquire_locked`](Self::acquire_locked)
    /// decides.
    #[inline]
    pub(crate) fn refuses_at_once(&self) -> bool {
        // Without a line nobody ever waits, and under the lock the check for room
        // would only be repeated: refuse without taking it.
        let refuses = !self.partitioned && !self.queues;
        if refuses {
            self.metrics.rejected.increment(1);
        }
        refuses
    }

    /// [`acquire`](Self::acquire) under the lock: the gate is partitioned, full,
    /// or has a waiting line.
    #[inline(never)]
    pub(crate) fn acquire_locked(self: &Arc<Self>, partition: usize, class: usize) -> Acquire<C> {
        let mut state = self.lock();
        let admission = &self.core.admission;
        // Waiters go first: a request that finds others in line joins them, even
        // if a slot was freed just now, since its releaser is about to hand that
        // slot to the line. (With partitions the line may hold only requests of
        // other partitions, so a request is admitted whenever its share allows.)
        let may_pass = state.line.len == 0 || self.partitioned;
        if may_pass {
            if let Some(in_flight) = state.try_admit(admission, partition) {
                drop(state);
                self.metrics.in_flight.set(in_flight as f64);
                return Acquire::Admitted(self.permit(partition, in_flight));
            }
        }
        if state.line.capacity == 0 {
            drop(state);
            self.metrics.rejected.increment(1);
            return Acquire::Refused(Refusal::Full);
        }

        let now = self.clock.now();
        let mut wake = Vec::new();
        let was_busy = state.line.len > 0;
        let shed = state.shed_stale(admission, now, &mut wake);
        let full = state.line.len >= state.line.capacity;
        let evicted = full && state.evict_below(admission, class, &mut wake);
        if full && !evicted {
            drop(state);
            self.metrics.shed.increment(shed);
            self.metrics.rejected.increment(1);
            wake.into_iter().for_each(Waker::wake);
            return Acquire::Refused(Refusal::QueueFull);
        }
        let shed = shed + u64::from(evicted);

        // Publish the longer line, then look for room once more: a release that
        // read the old length (zero) has already freed its slot, and it is seen
        // here. A line that was already published as busy needs no second look:
        // every release since then hands its slot to the line.
        admission.set_waiting(state.line.len + 1);
        let rechecked = if may_pass || state.line.len == 0 {
            state.try_admit(admission, partition)
        } else {
            None
        };
        if let Some(in_flight) = rechecked {
            admission.set_waiting(state.line.len);
            drop(state);
            self.metrics.shed.increment(shed);
            wake.into_iter().for_each(Waker::wake);
            return Acquire::Admitted(self.permit(partition, in_flight));
        }

        let id = state.next_id;
        state.next_id += 1;
        // A line emptied just now by shedding is still a standing queue: the
        // newcomer joins the same busy period.
        if !was_busy {
            state.line.busy_since = now;
        }
        state.line.classes[class].push_back(Waiter {
            id,
            enqueued: now,
            partition,
            waker: None,
        });
        state.line.len += 1;
        state.publish(admission);
        let queued = state.line.len;
        let patience = match state.line.discipline {
            Discipline::Fifo { timeout } => timeout,
            Discipline::CoDel { interval, .. } => interval,
        };
        drop(state);

        self.metrics.queued.set(queued as f64);
        self.metrics.shed.increment(shed);
        wake.into_iter().for_each(Waker::wake);
        let gate: Arc<dyn Slots> = self.clone();
        Acquire::Queued(Wait {
            gate: Some(gate),
            id,
            partition,
            sleep: self.clock.sleep_until(now + patience),
        })
    }

    #[inline]
    fn permit(&self, partition: usize, in_flight: usize) -> Permit {
        let partition = self.partitioned.then_some(partition);
        // A fixed limit learns nothing: no sample to record.
        let sampled = self.adaptive.then(|| (self.clock.now(), in_flight));
        Permit::new(self.core, partition, sampled)
    }

    /// The current limit.
    pub(crate) fn limit(&self) -> usize {
        self.core.admission.limit()
    }

    /// Requests holding a permit.
    pub(crate) fn in_flight(&self) -> usize {
        self.core.admission.in_flight()
    }

    /// Requests waiting in line.
    pub(crate) fn queued(&self) -> usize {
        self.core.admission.waiting()
    }

    /// Hands freed slots to waiters, then wakes them outside the lock.
    fn settle(&self, mut state: MutexGuard<'_, State<A>>) {
        let now = match state.line.len {
            0 => Timestamp::ZERO,
            _ => self.clock.now(),
        };
        let mut wake = Vec::new();
        let shed = state.dispatch(&self.core.admission, now, &mut wake);
        let queued = state.line.len;
        drop(state);

        if !wake.is_empty() || shed > 0 {
            self.metrics.queued.set(queued as f64);
            self.metrics.shed.increment(shed);
            wake.into_iter().for_each(Waker::wake);
        }
    }
}

impl<A, C> Slots for Gate<A, C>
where
    A: LimitAlgorithm,
    C: Clock,
{
    fn release(&self, partition: usize) {
        if self.partitioned {
            let mut state = self.lock();
            state.release_share(partition);
            self.core.admission.give_back();
            self.settle(state);
        } else if self.core.admission.give_back() {
            self.settle(self.lock());
        }
        self.metrics
            .in_flight
            .set(self.core.admission.in_flight() as f64);
    }

    fn record(&self, started: u32, in_flight: usize, outcome: Outcome) {
        if !self.adaptive {
            return;
        }
        let at = self.clock.now();
        let rtt = super::permit::micros(at).wrapping_sub(started);
        let sample = Sample {
            at,
            rtt: Duration::from_micros(u64::from(rtt)),
            in_flight,
            outcome,
        };
        let mut state = self.lock();
        let limit = state.algorithm.update(&sample).get();
        let old = self.core.admission.limit();
        if limit == old {
            return;
        }
        tracing::debug!(from = old, to = limit, "concurrency limit changed");
        self.core.admission.set_limit(limit);
        state.resize_partitions(limit);
        self.metrics.limit.set(limit as f64);
        self.settle(state);
    }

    fn hand_on(&self) {
        self.settle(self.lock());
        self.metrics
            .in_flight
            .set(self.core.admission.in_flight() as f64);
    }

    fn permit(&self, partition: usize, in_flight: usize) -> Permit {
        Gate::permit(self, partition, in_flight)
    }

    fn poll_decision(&self, id: u64, waker: &Waker) -> Option<Decision> {
        let mut state = self.lock();
        if let Some(decision) = state.take_decision(id) {
            return Some(decision);
        }
        let waiter = state
            .line
            .classes
            .iter_mut()
            .flat_map(|line| line.iter_mut())
            .find(|w| w.id == id);
        if let Some(waiter) = waiter {
            match &mut waiter.waker {
                Some(old) if old.will_wake(waker) => {}
                slot => *slot = Some(waker.clone()),
            }
        }
        None
    }

    fn expire(&self, id: u64) -> Option<Decision> {
        let mut state = self.lock();
        if let Some(decision) = state.take_decision(id) {
            return Some(decision);
        }
        if state.remove_waiter(&self.core.admission, id) {
            let queued = state.line.len;
            drop(state);
            self.metrics.queued.set(queued as f64);
            self.metrics.rejected.increment(1);
        }
        None
    }

    fn abandon(&self, id: u64, partition: usize) {
        let mut state = self.lock();
        match state.take_decision(id) {
            // Granted but never used: pass the permit on.
            Some(Decision::Admitted { .. }) => {
                state.release_share(partition);
                self.core.admission.give_back();
                self.settle(state);
            }
            Some(Decision::Shed) => {}
            None => {
                state.remove_waiter(&self.core.admission, id);
            }
        }
    }
}

impl<A, C> Drop for Gate<A, C> {
    fn drop(&mut self) {
        self.core.retire();
    }
}

/// What a [`LimitHandle`](super::LimitHandle) reads.
pub(crate) trait Observe: Send + Sync {
    fn limit(&self) -> usize;
    fn in_flight(&self) -> usize;
    fn queued(&self) -> usize;
}

impl<A, C> Observe for Gate<A, C>
where
    A: LimitAlgorithm,
    C: Clock,
{
    fn limit(&self) -> usize {
        Gate::limit(self)
    }

    fn in_flight(&self) -> usize {
        Gate::in_flight(self)
    }

    fn queued(&self) -> usize {
        Gate::queued(self)
    }
}
