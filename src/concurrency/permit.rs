//! What a request holds: a permit while it is in flight, or its place in line.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use super::algorithm::Outcome;
use super::gate::{Decision, Refusal};
use crate::clock::{Clock, Timestamp};

/// The type-erased face of a gate that permits and waiters hold, so their types
/// do not carry the algorithm and the clock.
pub(super) trait Slots: Send + Sync {
    fn release(&self, partition: usize);
    fn record(&self, started: Timestamp, in_flight: usize, outcome: Outcome);
    fn stamp(&self) -> Timestamp;
    fn poll_decision(&self, id: u64, waker: &Waker) -> Option<Decision>;
    fn expire(&self, id: u64) -> Option<Decision>;
    fn abandon(&self, id: u64, partition: usize);
}

/// The right to have one request in flight; released when dropped.
///
/// Kept to 32 bytes, since it travels inside every response future and body:
/// the counts are stored as `u32`, saturating (no process has four billion
/// requests in flight, and a partition index past `u32::MAX` names no share,
/// as the original index would not either).
pub(crate) struct Permit {
    gate: Arc<dyn Slots>,
    started: Timestamp,
    /// Requests in flight when this one was admitted, for its sample; zero once
    /// the outcome was recorded, or when none needs recording (a fixed limit).
    in_flight: u32,
    partition: u32,
}

/// `n` as a `u32`, saturating.
fn narrow(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Permit {
    /// A permit of `partition` whose outcome is not recorded (a fixed limit).
    #[inline]
    pub(super) fn unsampled(gate: Arc<dyn Slots>, partition: usize) -> Self {
        Permit {
            gate,
            started: Timestamp::ZERO,
            in_flight: 0,
            partition: narrow(partition),
        }
    }

    /// A permit of `partition` whose outcome is recorded: admitted at `started`
    /// with `in_flight` requests in flight, this one included.
    #[inline]
    pub(super) fn sampled(
        gate: Arc<dyn Slots>,
        partition: usize,
        started: Timestamp,
        in_flight: usize,
    ) -> Self {
        Permit {
            gate,
            started,
            in_flight: narrow(in_flight).max(1),
            partition: narrow(partition),
        }
    }

    /// Feeds the request's outcome to the limit algorithm (once; later calls do
    /// nothing).
    #[inline]
    pub(crate) fn record(&mut self, outcome: Outcome) {
        if self.in_flight != 0 {
            let in_flight = std::mem::take(&mut self.in_flight);
            self.gate.record(self.started, in_flight as usize, outcome);
        }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.gate.release(self.partition as usize);
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("partition", &self.partition)
            .field("in_flight", &self.in_flight)
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
            Decision::Admitted { in_flight } => {
                let started = gate.stamp();
                Ok(Permit::sampled(gate, *this.partition, started, in_flight))
            }
            Decision::Shed => Err(Refusal::Shed),
        })
    }
}
