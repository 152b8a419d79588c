//! Priority classes: which requests are shed last.

/// How much a request matters when the service is overloaded.
///
/// Waiting requests are served class by class, [`Critical`](Priority::Critical)
/// first; when the line is full, a new request takes the place of the newest
/// waiter of a lower class, which is shed. So health checks and the routes that
/// must keep working are shed last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Served first, shed last: health checks, login, checkout.
    Critical,
    /// Everything not classified otherwise.
    #[default]
    Normal,
    /// Served last, shed first: batch jobs, prefetches, analytics beacons.
    Low,
}

impl Priority {
    /// The line's class index: 0 is served first.
    pub(crate) fn class(self) -> usize {
        match self {
            Priority::Critical => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}
