//! Kubernetes upgrades: the target and its skew policy (pure), the rollout
//! order and one node's steps (pure), and the edges the steps run through
//! (the apt source and packages, kubeadm, the etcd snapshot), all commands
//! behind [`crate::host::command::CommandRunner`].

pub mod apt;
pub mod etcd;
pub mod kubeadm;
pub mod plan;
pub mod steps;
pub mod version;

pub use plan::{Decision, KubeadmAction, UpgradeStep};
pub use version::{ClusterVersions, KubeVersion, NodeVersion, TargetError};
