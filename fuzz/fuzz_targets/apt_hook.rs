//! The APT pre-install hook's input and its policy: parsing never panics,
//! and the verdict fails closed (an unreadable line, or a protected package
//! changed without a grant, refuses the run).
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::apt_hook(data));
