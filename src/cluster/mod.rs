//! The Kubernetes API: the drydock Namespace annotations, the Lease
//! semaphore, the drydock identity (enrolment, approval), this node (cordon), draining it, and the observations the
//! gates are evaluated on.

pub mod annotations;
pub mod drain;
pub mod fleet;
pub mod identity;
pub mod lease;
pub mod namespace_watch;
pub mod node;
pub mod observe;
pub mod versions;
