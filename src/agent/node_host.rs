//! The [`Host`] port on a real node: /proc for boot identity, the reboot
//! sentinels, logind over D-Bus, and the checks directory.

use std::path::PathBuf;

use jiff::Timestamp;

use super::ports::{BootChange, BootMark, Host, PortError};
use crate::config::Settings;
use crate::host::boot::BootId;
use crate::host::logind::{LogindRebooter, Rebooter};
use crate::host::{boot, checks, kernel, sentinel};

pub(crate) struct NodeHost {
    settings: Settings,
    rebooter: LogindRebooter,
    boot_id_path: PathBuf,
    proc_stat_path: PathBuf,
    init_stat_path: PathBuf,
}

impl NodeHost {
    pub(crate) fn new(settings: Settings, rebooter: LogindRebooter) -> Self {
        NodeHost {
            settings,
            rebooter,
            boot_id_path: boot::DEFAULT_BOOT_ID_PATH.into(),
            proc_stat_path: boot::DEFAULT_PROC_STAT_PATH.into(),
            init_stat_path: boot::DEFAULT_INIT_STAT_PATH.into(),
        }
    }
}

impl NodeHost {
    fn signals(&self) -> Result<boot::BootSignals, PortError> {
        boot::read_signals(
            &self.boot_id_path,
            &self.proc_stat_path,
            &self.init_stat_path,
        )
        .map_err(|e| PortError::failed("reading the boot signals", e))
    }
}

impl Host for NodeHost {
    fn boot_id(&self) -> Result<String, PortError> {
        boot::read_boot_id(&self.boot_id_path)
            .map(|b| b.as_str().to_string())
            .map_err(|e| PortError::failed("reading boot_id", e))
    }

    /// When init started, not the kernel's btime: in a container btime is
    /// the host's, long before this boot (phase durations came out wrong).
    fn booted_at(&self) -> Result<Timestamp, PortError> {
        self.signals().map(|b| b.started)
    }

    /// Both signals must agree ([`boot::compare`]): a changed boot_id with
    /// init started at the same time is as unclear as the reverse.
    fn boot_change(&self, before: &BootMark) -> Result<BootChange, PortError> {
        let now = self.signals()?;
        let (Some(id), Some(started)) = (BootId::parse(&before.boot_id), before.booted_at) else {
            return Ok(BootChange::judge(
                before,
                &BootMark {
                    boot_id: now.boot_id.to_string(),
                    booted_at: Some(now.started),
                },
            ));
        };
        let before = boot::BootSignals {
            boot_id: id,
            btime: started,
            started,
        };
        Ok(match boot::compare(&before, &now) {
            boot::BootChange::Same => BootChange::Same,
            boot::BootChange::New => BootChange::New {
                booted_at: now.started,
            },
            boot::BootChange::Inconsistent(reason) => BootChange::Unclear { reason },
        })
    }

    async fn reboot_need(
        &self,
        requested: Option<sentinel::RebootRequest>,
    ) -> Result<Vec<String>, PortError> {
        let running = kernel::running_release()
            .map_err(|e| PortError::failed("reading the running kernel", e))?;
        let need = sentinel::check(&self.settings.reboot, &running, requested).await;
        for problem in &need.problems {
            tracing::warn!(error = %problem, "a reboot-needed source could not be checked");
        }
        Ok(need.reasons.iter().map(ToString::to_string).collect())
    }

    async fn reboot(&self, reason: &str) -> Result<(), PortError> {
        self.rebooter
            .reboot(reason)
            .await
            .map_err(|e| PortError::failed("asking logind to reboot", e))
    }

    fn commands(&self) -> Option<&dyn crate::host::command::CommandRunner> {
        Some(&crate::host::command::HostRunner)
    }

    async fn restart_kubelet(&self) -> Result<(), PortError> {
        let systemd = crate::host::systemd::Systemd::new(self.rebooter.bus().clone());
        let timeout = std::time::Duration::from_secs(120);
        systemd
            .daemon_reload(timeout)
            .await
            .map_err(|e| PortError::failed("reloading systemd", e))?;
        systemd
            .restart_unit(&self.settings.upgrade.kubelet_unit, timeout)
            .await
            .map_err(|e| PortError::failed("restarting the kubelet", e))
    }

    async fn run_checks(&self) -> Result<(), String> {
        let results = checks::run_checks(
            &self.settings.verify.checks_dir,
            self.settings.verify.check_timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        match results.iter().find(|r| !r.passed()) {
            None => Ok(()),
            Some(failed) => Err(format!(
                "check {} failed: {:?}",
                failed.name, failed.outcome
            )),
        }
    }
}
