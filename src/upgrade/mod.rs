//! Kubernetes upgrades: the target and its skew policy (pure), the rollout
//! order and one node's steps (pure), and the edges the steps run through
//! (the apt source and packages, kubeadm, the etcd snapshot), all commands
//! behind [`crate::host::command::CommandRunner`].

pub(crate) mod apt;
pub(crate) mod etcd;
pub(crate) mod kubeadm;
pub(crate) mod plan;
pub(crate) mod steps;
pub(crate) mod version;

pub(crate) use plan::KubeadmAction;
pub(crate) use plan::UpgradeStep;
pub(crate) use version::ClusterVersions;
pub use version::KubeVersion;
