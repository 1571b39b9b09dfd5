//! Every gate's name: one vocabulary for the gates, the shared verdicts,
//! the agent's gate answers, metrics labels, the daemon and `drydock status`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GateName {
    /// `drydock pause` on this node.
    #[serde(rename = "paused")]
    Paused,
    #[serde(rename = "window")]
    Window,
    /// `drydock cluster pause`.
    #[serde(rename = "cluster-paused")]
    ClusterPaused,
    /// A node failed verification and stopped the fleet.
    #[serde(rename = "halted")]
    Halted,
    #[serde(rename = "nodes-ready")]
    NodesReady,
    #[serde(rename = "daemonsets")]
    DaemonSets,
    #[serde(rename = "soak")]
    Soak,
    #[serde(rename = "alerts")]
    Alerts,
    #[serde(rename = "blocking-pods")]
    BlockingPods,
    /// Stands for every cluster-wide gate when the cluster could not be read.
    #[serde(rename = "cluster")]
    Cluster,
}

impl GateName {
    pub(crate) const ALL: [GateName; 10] = [
        GateName::Paused,
        GateName::Window,
        GateName::ClusterPaused,
        GateName::Halted,
        GateName::NodesReady,
        GateName::DaemonSets,
        GateName::Soak,
        GateName::Alerts,
        GateName::BlockingPods,
        GateName::Cluster,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            GateName::Paused => "paused",
            GateName::Window => "window",
            GateName::ClusterPaused => "cluster-paused",
            GateName::Halted => "halted",
            GateName::NodesReady => "nodes-ready",
            GateName::DaemonSets => "daemonsets",
            GateName::Soak => "soak",
            GateName::Alerts => "alerts",
            GateName::BlockingPods => "blocking-pods",
            GateName::Cluster => "cluster",
        }
    }
}

impl fmt::Display for GateName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for GateName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GateName::ALL
            .into_iter()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| format!("unknown gate {s:?}"))
    }
}

impl PartialEq<&str> for GateName {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_the_gates() {
        for g in GateName::ALL {
            assert_eq!(g.as_str().parse::<GateName>().unwrap(), g);
            assert_eq!(serde_json::to_value(g).unwrap(), g.as_str());
        }
        // Every gate the evaluator names is one of these.
        for name in [
            super::super::paused::LOCAL,
            super::super::paused::CLUSTER,
            super::super::paused::HALTED,
            super::super::window::NAME,
            super::super::nodes_ready::NAME,
            super::super::daemonsets::NAME,
            super::super::soak::NAME,
            super::super::alerts::NAME,
            super::super::blocking_pods::NAME,
            super::super::CLUSTER_UNAVAILABLE,
        ] {
            assert!(name.parse::<GateName>().is_ok(), "{name}");
        }
        assert!("maintenance-window".parse::<GateName>().is_err());
    }
}
