//! Where a node is in its cycle: one vocabulary for the agent's states, logs,
//! `drydock status`, metrics and the node annotation.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Idle,
    Pending,
    Locked,
    Cordoning,
    Draining,
    Rebooting,
    /// A Kubernetes upgrade step (the upgrade states).
    Upgrading,
    Verifying,
    Releasing,
    /// Released; the cluster-wide soak runs (a reporting phase: the agent
    /// itself is idle again).
    Soaking,
    Failed,
}

impl Phase {
    pub(crate) const ALL: [Phase; 11] = [
        Phase::Idle,
        Phase::Pending,
        Phase::Locked,
        Phase::Cordoning,
        Phase::Draining,
        Phase::Rebooting,
        Phase::Upgrading,
        Phase::Verifying,
        Phase::Releasing,
        Phase::Soaking,
        Phase::Failed,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Pending => "pending",
            Phase::Locked => "locked",
            Phase::Cordoning => "cordoning",
            Phase::Draining => "draining",
            Phase::Rebooting => "rebooting",
            Phase::Upgrading => "upgrading",
            Phase::Verifying => "verifying",
            Phase::Releasing => "releasing",
            Phase::Soaking => "soaking",
            Phase::Failed => "failed",
        }
    }

    /// The node is (or may be) out of service: cordoned by drydock,
    /// draining, down, upgrading or not yet verified.
    pub fn out_of_service(self) -> bool {
        matches!(
            self,
            Phase::Cordoning
                | Phase::Draining
                | Phase::Rebooting
                | Phase::Upgrading
                | Phase::Verifying
                | Phase::Releasing
        )
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Phase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown phase {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_are_distinct() {
        for p in Phase::ALL {
            assert_eq!(p.as_str().parse::<Phase>().unwrap(), p);
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
        }
        let mut names: Vec<_> = Phase::ALL.iter().map(|p| p.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
        assert!("draning".parse::<Phase>().is_err());
    }
}
