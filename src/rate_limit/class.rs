//! Per-request choices: which plan, what cost, or no limit at all.

use http::Request;

/// How one request counts: against which plan, for how many units.
///
/// ```
/// use tower_toolbox::rate_limit::Class;
///
/// let upload = Class::new().plan(1).cost(10);
/// let health_check = Class::exempt();
/// # let _ = (upload, health_check);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub(crate) plan: usize,
    pub(crate) cost: u32,
    pub(crate) exempt: bool,
}

impl Class {
    /// The first plan, one unit.
    pub const fn new() -> Self {
        Class {
            plan: 0,
            cost: 1,
            exempt: false,
        }
    }

    /// Not limited at all (an allow-list): no state is read or written and no
    /// headers are added.
    pub const fn exempt() -> Self {
        Class {
            plan: 0,
            cost: 0,
            exempt: true,
        }
    }

    /// Counts against plan `index`, in the order the plans were added to the
    /// layer. An index past the last plan counts against the first one.
    pub const fn plan(mut self, index: usize) -> Self {
        self.plan = index;
        self
    }

    /// Consumes `cost` units (default 1). A cost of 0 reads the state without
    /// consuming; a cost larger than a quota's burst is always refused, without
    /// `Retry-After`.
    pub const fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }
}

impl Default for Class {
    fn default() -> Self {
        Self::new()
    }
}

/// Chooses the [`Class`] of a request. Closures `Fn(&Request<B>) -> Class` are
/// classifiers.
pub trait Classify<B> {
    /// The class of `request`.
    fn classify(&self, request: &Request<B>) -> Class;
}

/// Every request counts one unit against the first plan.
#[derive(Clone, Copy, Debug, Default)]
pub struct EveryRequest;

impl<B> Classify<B> for EveryRequest {
    #[inline]
    fn classify(&self, _request: &Request<B>) -> Class {
        Class::new()
    }
}

impl<B, F> Classify<B> for F
where
    F: Fn(&Request<B>) -> Class,
{
    #[inline]
    fn classify(&self, request: &Request<B>) -> Class {
        self(request)
    }
}
