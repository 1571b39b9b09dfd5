//! Every key of the store's kv table, in one place: who writes it, who
//! reads it. Values are JSON; the type is named with each key.

/// `drydock resume` (the CLI): the request time (a `Timestamp`). The agent
/// honours it only when issued after the failure it answers.
pub const RESUME_REQUESTED: &str = "resume-requested";
/// `drydock release --force` (the CLI): the request time, as above.
pub const FORCE_RELEASE: &str = "force-release-requested";
/// The agent's last status line (`StatusRecord`), for `drydock status`.
pub const AGENT_STATUS: &str = "agent.status";
/// The agent's last gate answers (`GatesRecord`).
pub const AGENT_GATES: &str = "agent.gates";
/// The agent's last reboot-need check (`RebootNeedRecord`).
pub const AGENT_REBOOT_NEED: &str = "agent.reboot-need";
/// `drydock pause` (the CLI): the local pause (`LocalPause`).
pub const PAUSE: &str = "paused";
/// `drydock reboot` (the CLI): the operator's request (`RebootRequest`).
pub const REBOOT_REQUEST: &str = "reboot-request";

/// Every key, for tests and tools that list them.
pub const ALL: [&str; 7] = [
    RESUME_REQUESTED,
    FORCE_RELEASE,
    AGENT_STATUS,
    AGENT_GATES,
    AGENT_REBOOT_NEED,
    PAUSE,
    REBOOT_REQUEST,
];

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_distinct() {
        let mut all = super::ALL.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), super::ALL.len());
    }
}
