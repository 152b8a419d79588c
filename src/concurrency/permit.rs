//! What a request holds: a permit while it is in flight, or its place in line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use metrics::Gauge;

use super::admission::{Admission, Released};
use super::algorithm::Outcome;
use super::gate::{Decision, Refusal};
use crate::clock::{Clock, Timestamp};

/// The type-erased face of a gate, for what its permits and waiters need from
/// it beyond the counts: handing slots on, samples, the line.
pub(super) trait Slots: Send + Sync {
    /// Gives back a slot of `partition` under the gate's lock, handing it on to
    /// a waiter if one may take it.
    fn release(&self, partition: usize);
    /// Hands freed slots to waiters, after a release that found some.
    fn hand_on(&self);
    fn record(&self, started: u32, in_flight: usize, outcome: Outcome);
    /// The permit of a waiter admitted with `in_flight` in flight.
    fn permit(&self, partition: usize, in_flight: usize) -> Permit;
    fn poll_decision(&self, id: u64, waker: &Waker) -> Option<Decision>;
    fn expire(&self, id: u64) -> Option<Decision>;
    fn abandon(&self, id: u64, partition: usize);
}

/// The part of a gate its permits point at: the counts, the in-flight gauge,
/// and the way back to the gate.
///
/// A permit releases on the path of every request, so it holds a plain
/// `&'static Core` rather than a reference-counted pointer: no count to raise
/// on admission nor to lower on release. Cores are allocated once and never
/// freed. When a gate is dropped and its last permit released (see
/// [`Admission::retire`]), its core goes on a spare list that later gates take
/// from, so the number of cores a process holds is the most gates it ever had
/// at once, plus one for each limit built with gauges (see [`Core::lease`]).
pub(crate) struct Core {
    pub(super) admission: Admission,
    /// Whether `in_flight` reports: its gauge is fixed for the core's life, so a
    /// core taken from the spare list reports nothing.
    gauged: AtomicBool,
    in_flight: Gauge,
    /// The gate, for releases that find waiters and for samples; `None` once
    /// the gate is dropped.
    gate: Mutex<Option<Weak<dyn Slots>>>,
}

/// Cores of dropped gates whose permits were all released.
static SPARE: Mutex<Vec<&'static Core>> = Mutex::new(Vec::new());

impl Core {
    /// A core for a new gate with `limit`. A gate that reports its in-flight
    /// count gets a new core carrying `gauge`; the others reuse a spare one.
    pub(super) fn lease(limit: usize, gauge: Option<Gauge>) -> &'static Core {
        let core = match gauge {
            Some(gauge) => Core::leak(limit, gauge, true),
            None => {
                let spare = SPARE.lock().unwrap_or_else(PoisonError::into_inner).pop();
                spare.unwrap_or_else(|| Core::leak(limit, Gauge::noop(), false))
            }
        };
        core.admission.reset(limit);
        core
    }

    fn leak(limit: usize, in_flight: Gauge, gauged: bool) -> &'static Core {
        Box::leak(Box::new(Core {
            admission: Admission::new(limit),
            gauged: AtomicBool::new(gauged),
            in_flight,
            gate: Mutex::new(None),
        }))
    }

    /// Points the core at its gate, once the gate exists.
    pub(super) fn attach(&self, gate: Weak<dyn Slots>) {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = Some(gate);
    }

    /// The gate is being dropped: the core goes spare now if nothing is in
    /// flight, or with its last release.
    pub(super) fn retire(&'static self) {
        *self.gate.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if self.admission.retire() {
            self.recycle();
        }
    }

    fn recycle(&'static self) {
        self.gauged.store(false, Ordering::Relaxed);
        SPARE
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self);
        tracing::trace!("concurrency gate counts kept for reuse");
    }

    /// The gate, if it is still there.
    fn gate(&self) -> Option<Arc<dyn Slots>> {
        let gate = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        gate.as_ref().and_then(Weak::upgrade)
    }

    #[inline]
    pub(super) fn report_in_flight(&self, in_flight: usize) {
        if self.gauged.load(Ordering::Relaxed) {
            self.in_flight.set(in_flight as f64);
        }
    }
}

/// How a permit is released.
///
/// A one-byte enum rather than a flag, so that enums around a permit (an
/// `Option`, the response body) find their tag in its unused values and stay
/// the permit's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Release {
    /// Lock-free, through the counts.
    Counts,
    /// Under the gate's lock, which counts partition shares.
    Partitioned,
}

/// The right to have one request in flight; released when dropped.
///
/// Kept to 16 bytes, since it travels inside every response future and body,
/// and futures and responses up to 128 bytes move without a call to `memcpy`:
/// the admission time is kept as wrapping microseconds (a request longer than
/// 71 minutes is sampled as its length modulo that), the in-flight count
/// saturates at 65,535 and the partition index at 255 (which names no share:
/// a limit has at most 255).
pub(crate) struct Permit {
    core: &'static Core,
    started: u32,
    /// Requests in flight at admission for the sample; zero once recorded, or
    /// when there is nothing to record (a fixed limit).
    in_flight: u16,
    partition: u8,
    release: Release,
}

/// Wrapping microseconds of `at`, as a permit keeps them.
pub(super) fn micros(at: Timestamp) -> u32 {
    (at.as_nanos() / 1_000) as u32
}

impl Permit {
    /// A permit of `partition`, admitted at `started` with `in_flight` requests
    /// in flight (this one included); `sampled` if its outcome is to be
    /// recorded.
    #[inline]
    pub(super) fn new(
        core: &'static Core,
        partition: Option<usize>,
        sampled: Option<(Timestamp, usize)>,
    ) -> Self {
        let (started, in_flight) = match sampled {
            Some((started, in_flight)) => (
                micros(started),
                u16::try_from(in_flight).unwrap_or(u16::MAX).max(1),
            ),
            None => (0, 0),
        };
        let release = match partition {
            Some(_) => Release::Partitioned,
            None => Release::Counts,
        };
        Permit {
            core,
            started,
            in_flight,
            partition: partition.map_or(0, |p| u8::try_from(p).unwrap_or(u8::MAX)),
            release,
        }
    }

    /// Feeds the request's outcome to the limit algorithm (once; later calls do
    /// nothing).
    #[inline]
    pub(crate) fn record(&mut self, outcome: Outcome) {
        if self.in_flight != 0 {
            let in_flight = std::mem::take(&mut self.in_flight);
            self.record_slow(in_flight, outcome);
        }
    }

    #[inline(never)]
    fn record_slow(&self, in_flight: u16, outcome: Outcome) {
        if let Some(gate) = self.core.gate() {
            gate.record(self.started, usize::from(in_flight), outcome);
        }
    }

    /// After a release that found requests waiting. The slot is given back
    /// already, so the core may serve another gate by now: this one is asked to
    /// hand slots on, which grants only what room it has.
    #[cold]
    #[inline(never)]
    fn hand_on(&self) {
        if let Some(gate) = self.core.gate() {
            gate.hand_on();
        }
    }

    /// The release of a partitioned gate's permit, under the gate's lock.
    #[cold]
    #[inline(never)]
    fn release_slow(&self) {
        match self.core.gate() {
            Some(gate) => gate.release(usize::from(self.partition)),
            // Without its gate nobody waits for the slot.
            None => {
                if self.core.admission.release_orphan() {
                    self.core.recycle();
                }
            }
        }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if self.release == Release::Partitioned {
            return self.release_slow();
        }
        match self.core.admission.release() {
            Released::Done(in_flight) => self.core.report_in_flight(in_flight),
            Released::Last => self.core.recycle(),
            Released::Waiting => self.hand_on(),
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("partition", &self.partition)
            .field("in_flight", &self.in_flight)
            .field("release", &self.release)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// A request waiting in line for a permit.
    pub(crate) struct Wait<C: Clock> {
        pub(super) gate: Option<Arc<dyn Slots>>,
        pub(super) id: u64,
        pub(super) partition: usize,
        #[pin]
        pub(super) sleep: C::Sleep,
    }

    impl<C: Clock> PinnedDrop for Wait<C> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(gate) = this.gate.take() {
                gate.abandon(*this.id, *this.partition);
            }
        }
    }
}

impl<C: Clock> std::fmt::Debug for Wait<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait").field("id", &self.id).finish()
    }
}

impl<C: Clock> Wait<C> {
    pub(crate) fn poll_permit(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, Refusal>> {
        let this = self.project();
        let gate = this.gate.as_ref().expect("Wait polled after completion");
        let decision = match gate.poll_decision(*this.id, cx.waker()) {
            Some(decision) => decision,
            None => match this.sleep.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => match gate.expire(*this.id) {
                    Some(decision) => decision,
                    None => {
                        *this.gate = None;
                        return Poll::Ready(Err(Refusal::TimedOut));
                    }
                },
            },
        };

        let gate = this.gate.take().expect("checked above");
        Poll::Ready(match decision {
            Decision::Admitted { in_flight } => Ok(gate.permit(*this.partition, in_flight)),
            Decision::Shed => Err(Refusal::Shed),
        })
    }
}
