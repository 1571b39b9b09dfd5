//! The Kubernetes API: the drydock Namespace annotations, the Lease
//! semaphore, the drydock identity (enrolment, approval), this node (cordon), draining it, and the observations the
//! gates are evaluated on.

pub(crate) mod annotations;
pub(crate) mod drain;
pub(crate) mod fleet;
pub(crate) mod identity;
pub(crate) mod lease;
pub(crate) mod namespace_watch;
pub(crate) mod node;
pub(crate) mod observe;
pub(crate) mod versions;
