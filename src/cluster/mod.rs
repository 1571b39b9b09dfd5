//! The Kubernetes API: the drydock Namespace annotations, the Lease
//! semaphore, and the observations the gates are evaluated on.

pub mod annotations;
pub mod lease;
pub mod observe;
