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
pub(crate) struct Permit {
    pub(super) gate: Arc<dyn Slots>,
    pub(super) partition: usize,
    pub(super) started: Timestamp,
    pub(super) in_flight: usize,
    /// Whether the outcome was recorded, or needs no recording (a fixed limit).
    pub(super) recorded: bool,
}

impl Permit {
    /// Feeds the request's outcome to the limit algorithm (once; later calls do
    /// nothing).
    #[inline]
    pub(crate) fn record(&mut self, outcome: Outcome) {
        if !self.recorded {
            self.recorded = true;
            self.gate.record(self.started, self.in_flight, outcome);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.partition);
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
            Decision::Admitted { in_flight } => Ok(Permit {
                started: gate.stamp(),
                gate,
                partition: *this.partition,
                in_flight,
                recorded: false,
            }),
            Decision::Shed => Err(Refusal::Shed),
        })
    }
}
