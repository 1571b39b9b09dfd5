//! The JSON drydock keeps in its state DB (agent state, local settings, the
//! apt run plan): decoding any bytes never panics, and what decodes
//! re-encodes to the same value.
#![no_main]

use drydock::agent::AgentState;
use drydock::agent::driver::{GatesRecord, RebootNeedRecord, StatusRecord};
use drydock::aptgate::record::PendingRun;
use drydock::gates::paused::LocalPause;
use drydock::host::sentinel::RebootRequest;
use libfuzzer_sys::fuzz_target;
use serde::{Serialize, de::DeserializeOwned};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<T>(data) {
        let json = serde_json::to_vec(&value).expect("a decoded value encodes");
        let again: T = serde_json::from_slice(&json).expect("what drydock wrote, it reads");
        assert_eq!(again, value);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<AgentState>(data);
    round_trip::<LocalPause>(data);
    round_trip::<RebootRequest>(data);
    round_trip::<GatesRecord>(data);
    round_trip::<RebootNeedRecord>(data);
    round_trip::<PendingRun>(data);
    let _ = serde_json::from_slice::<StatusRecord>(data);
});
