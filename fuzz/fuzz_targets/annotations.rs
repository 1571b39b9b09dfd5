//! The drydock Namespace annotations every node reads (pause, halt, last
//! reboot, shared gate verdict): anything anyone with Namespace rights can
//! write parses without panicking, and what is shown is escaped and bounded.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::annotations(data));
