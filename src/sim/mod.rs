//! Kubernetes API simulator (owned by the simulator work; see issue 2).
