//! A simulated machine for `drydock simulate`: its boot_id and reboot need
//! live in memory, and a reboot request goes to the fleet, which takes the
//! node down in the simulator and restarts its agent.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::agent::ports::{Host, PortError};

#[derive(Debug, Default)]
pub struct Machine {
    pub boot_id: String,
    pub booted_at: jiff::Timestamp,
    pub need: Vec<String>,
    pub reboots: u32,
    /// Post-boot checks fail on this machine.
    pub checks_fail: bool,
}

#[derive(Clone)]
pub struct SimHost {
    pub node: String,
    pub machine: Arc<Mutex<Machine>>,
    reboots: mpsc::UnboundedSender<String>,
    /// Its packages and tools, for a simulated Kubernetes upgrade.
    tools: Option<Arc<super::upgrade::SimTools>>,
}

impl SimHost {
    pub fn new(
        node: &str,
        machine: Arc<Mutex<Machine>>,
        reboots: mpsc::UnboundedSender<String>,
    ) -> Self {
        SimHost {
            node: node.to_string(),
            machine,
            reboots,
            tools: None,
        }
    }

    /// The machine can upgrade Kubernetes with these simulated tools.
    pub(crate) fn with_tools(mut self, tools: Arc<super::upgrade::SimTools>) -> Self {
        self.tools = Some(tools);
        self
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Host for SimHost {
    fn boot_id(&self) -> Result<String, PortError> {
        Ok(self.machine().boot_id.clone())
    }

    fn booted_at(&self) -> Result<jiff::Timestamp, PortError> {
        Ok(self.machine().booted_at)
    }

    async fn reboot_need(
        &self,
        requested: Option<crate::host::sentinel::RebootRequest>,
    ) -> Result<Vec<String>, PortError> {
        let mut need = self.machine().need.clone();
        need.extend(requested.map(|r| format!("requested by an operator: {}", r.reason)));
        Ok(need)
    }

    async fn reboot(&self, _reason: &str) -> Result<(), PortError> {
        self.machine().reboots += 1;
        self.reboots.send(self.node.clone()).map_err(|_| {
            PortError::failed("requesting a simulated reboot", "the fleet has stopped")
        })
    }

    fn commands(&self) -> Option<&dyn crate::host::command::CommandRunner> {
        self.tools
            .as_deref()
            .map(|t| t as &dyn crate::host::command::CommandRunner)
    }

    /// The kubelet comes back running the version its package now has,
    /// and its Node says so.
    async fn restart_kubelet(&self) -> Result<(), PortError> {
        let tools = self.tools.as_ref().ok_or_else(|| {
            PortError::permanent("restarting the kubelet", "no simulated kubelet here")
        })?;
        let version = tools.installed_kubelet().ok_or_else(|| {
            PortError::permanent("restarting the kubelet", "kubelet is not installed")
        })?;
        tools
            .sim
            .kubelet_restarted(&self.node, &version)
            .map_err(|e| PortError::failed("restarting the kubelet", e))
    }

    async fn run_checks(&self) -> Result<(), String> {
        if self.machine().checks_fail {
            Err("check 10-containerd exited 1: containerd snapshotter corrupt".into())
        } else {
            Ok(())
        }
    }
}
