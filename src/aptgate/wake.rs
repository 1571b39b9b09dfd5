//! Waking the daemon after an apt run.
//!
//! The daemon binds a Unix datagram socket at [`wake_path`]; the post-invoke
//! hook sends it one datagram (`apt-run`). No listener (daemon stopped) is
//! not an error: the daemon reconciles everything when it starts.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use crate::config::Settings;

const WAKE_MESSAGE: &[u8] = b"apt-run";

pub fn wake_path(settings: &Settings) -> PathBuf {
    settings.node.run_dir.join("wake.sock")
}

/// Sends the wake datagram; `Ok(false)` when no daemon listens.
pub(crate) fn wake_daemon(settings: &Settings) -> std::io::Result<bool> {
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    match sock.send_to(WAKE_MESSAGE, wake_path(settings)) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::WouldBlock
            ) =>
        {
            // WouldBlock: the daemon has wake-ups queued already.
            Ok(e.kind() == ErrorKind::WouldBlock)
        }
        Err(e) => Err(e),
    }
}

/// The daemon's end: bind once, then `recv().await` in the loop.
pub(crate) struct WakeListener {
    socket: tokio::net::UnixDatagram,
}

impl WakeListener {
    /// Binds [`wake_path`], replacing a stale socket left by a previous run.
    pub(crate) fn bind(settings: &Settings) -> std::io::Result<WakeListener> {
        let path = wake_path(settings);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(WakeListener {
            socket: tokio::net::UnixDatagram::bind(&path)?,
        })
    }

    /// Waits for the next wake-up and drains any others already queued.
    pub(crate) async fn recv(&self) -> std::io::Result<()> {
        let mut buf = [0u8; 64];
        self.socket.recv(&mut buf).await?;
        while self.socket.try_recv(&mut buf).is_ok() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_a_listener_and_tolerates_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings::default();
        settings.node.run_dir = dir.path().join("run");
        assert!(!wake_daemon(&settings).unwrap());
        let listener = WakeListener::bind(&settings).unwrap();
        assert!(wake_daemon(&settings).unwrap());
        assert!(wake_daemon(&settings).unwrap());
        tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
            .await
            .unwrap()
            .unwrap();
        drop(listener);
        // Stale socket file, nobody bound: still not an error.
        assert!(!wake_daemon(&settings).unwrap());
    }
}
