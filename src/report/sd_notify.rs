//! systemd notifications: READY=1, a STATUS= line when it changes, WATCHDOG=1
//! keep-alives, STOPPING=1. Everything is a no-op without NOTIFY_SOCKET.

use std::sync::Mutex;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

/// Sends to the service manager; remembers the last STATUS so an unchanged
/// line is not sent again.
#[derive(Debug, Default)]
pub(crate) struct SystemdNotifier {
    last_status: Mutex<Option<String>>,
}

fn send(states: &[NotifyState]) {
    // Never unset the environment: later calls (watchdog) need it.
    if let Err(e) = sd_notify::notify(false, states) {
        debug!(error = %e, "sd_notify failed");
    }
}

impl SystemdNotifier {
    pub(crate) fn new() -> Self {
        SystemdNotifier::default()
    }

    /// READY=1 together with the current status.
    pub(crate) fn ready(&self, status: &str) {
        // One line: a newline would start another notify assignment.
        let status = &crate::text::display(status, 400);
        *self.lock() = Some(status.clone());
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// STATUS=line, only if it differs from the last one sent.
    pub(crate) fn status(&self, status: &str) -> bool {
        let status = &crate::text::display(status, 400);
        let mut last = self.lock();
        if last.as_deref() == Some(status) {
            return false;
        }
        *last = Some(status.clone());
        drop(last);
        send(&[NotifyState::Status(status)]);
        true
    }

    pub(crate) fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub(crate) fn watchdog() {
        send(&[NotifyState::Watchdog]);
    }

    /// How often to send WATCHDOG=1: half of WatchdogSec, when systemd asked
    /// for keep-alives from this process.
    pub(crate) fn watchdog_interval() -> Option<Duration> {
        let mut usec = 0u64;
        if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
            Some(Duration::from_micros(usec / 2))
        } else {
            None
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.last_status.lock().unwrap_or_else(|p| p.into_inner())
    }
}
