//! The configuration loader: any text gives settings within their ranges or
//! an error that names the file, bounded in length; it never panics.
#![no_main]

use std::path::Path;
use std::time::Duration;

use drydock::config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::load_text(Path::new("/fuzz/drydock.toml"), text) {
        Ok(s) => {
            assert!(s.reboot.check_interval > Duration::ZERO);
            assert!(s.lease.duration >= Duration::from_secs(5));
            assert!(s.drain.retry_interval > Duration::ZERO);
            assert!(s.node.state_db.is_absolute());
            assert!(s.node.run_dir.is_absolute());
            assert!(s.packages.dpkg_root.is_absolute());
            assert!((1..=100).contains(&s.lease.concurrency));
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.starts_with("/fuzz/drydock.toml:"), "{shown}");
            assert!(shown.len() < 4000, "unbounded error: {} bytes", shown.len());
            assert!(
                !shown.chars().any(|c| c.is_control()),
                "raw control character in {shown:?}"
            );
        }
    }
});
