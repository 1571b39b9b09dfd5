//! Every key of the store's kv table, in one place: who writes it, who
//! reads it. Values are JSON. A [`Key`] carries its value's type, so a
//! typed read or write ([`super::Store::read`], [`super::Store::write`])
//! cannot use the wrong one; keys whose value type lives above the store
//! (the agent's records) are typed where that type is defined, with the
//! name from here.

use std::marker::PhantomData;

use jiff::Timestamp;

/// A kv key and the type of the value stored under it.
pub struct Key<T> {
    name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Key<T> {
    pub const fn new(name: &'static str) -> Self {
        Key {
            name,
            value: PhantomData,
        }
    }

    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Key<T> {}

impl<T> AsRef<str> for Key<T> {
    fn as_ref(&self) -> &str {
        self.name
    }
}

impl<T> std::fmt::Display for Key<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl<T> std::fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({})", self.name)
    }
}

/// `drydock resume` (the CLI): the request time. The agent honours it
/// only when issued after the failure it answers.
pub const RESUME_REQUESTED: Key<Timestamp> = Key::new("resume-requested");
/// `drydock release --force` (the CLI): the request time, as above.
pub const FORCE_RELEASE: Key<Timestamp> = Key::new("force-release-requested");
/// The agent's last status line (`agent::driver::StatusRecord`), for `drydock status`.
pub(crate) const AGENT_STATUS: &str = "agent.status";
/// The agent's last gate answers (`agent::driver::GatesRecord`).
pub(crate) const AGENT_GATES: &str = "agent.gates";
/// The agent's last reboot-need check (`agent::driver::RebootNeedRecord`).
pub(crate) const AGENT_REBOOT_NEED: &str = "agent.reboot-need";
/// A fleet halt the agent owes the cluster (`agent::ports::Halt`): written
/// before the halt is set, removed once the Namespace carries it, so a
/// verification failure during an API outage still stops the fleet.
pub(crate) const AGENT_PENDING_HALT: &str = "agent.pending-halt";
/// `drydock pause` (the CLI): the local pause (`gates::paused::LocalPause`).
pub(crate) const PAUSE: &str = "paused";
/// `drydock reboot` (the CLI): the operator's request (`host::sentinel::RebootRequest`).
pub(crate) const REBOOT_REQUEST: &str = "reboot-request";

/// Every key, for the test that they are distinct.
#[cfg(test)]
const ALL: [&str; 8] = [
    RESUME_REQUESTED.name(),
    FORCE_RELEASE.name(),
    AGENT_STATUS,
    AGENT_GATES,
    AGENT_REBOOT_NEED,
    AGENT_PENDING_HALT,
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

    #[test]
    fn a_typed_key_reads_and_writes_its_own_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("s.db")).unwrap();
        let at = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        store.write(super::RESUME_REQUESTED, &at).unwrap();
        assert_eq!(store.read(super::RESUME_REQUESTED).unwrap(), Some(at));
        // The same row under its name, as untyped callers see it.
        let raw: serde_json::Value = store.get(super::RESUME_REQUESTED.name()).unwrap().unwrap();
        assert_eq!(raw, serde_json::json!(at.to_string()));
        assert!(store.remove(super::RESUME_REQUESTED).unwrap());
        assert_eq!(store.read(super::RESUME_REQUESTED).unwrap(), None);
    }
}
