//! The JSON drydock keeps in its state DB (agent state, local settings, the
//! apt run plan): decoding any bytes never panics, and what decodes
//! re-encodes to the same value.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::state_json(data));
