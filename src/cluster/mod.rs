//! The Kubernetes API: the drydock Namespace annotations, the Lease
//! semaphore, this node (cordon), draining it, and the observations the
//! gates are evaluated on.

pub mod annotations;
pub mod drain;
pub mod fleet;
pub mod lease;
pub mod node;
pub mod observe;
