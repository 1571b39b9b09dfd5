//! The configuration loader: any text gives settings within their ranges or
//! an error that names the file, bounded in length; it never panics.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::config(data));
