//! systemd's manager over D-Bus: `daemon-reload` and restarting a unit
//! (the kubelet, after its package was upgraded), waiting for the job.

use std::num::NonZeroUsize;
use std::time::Duration;

use futures::StreamExt;
use tracing::info;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath};

use super::logind::Bus;

const SYSTEMD_SERVICE: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const SYSTEMD_MANAGER: &str = "org.freedesktop.systemd1.Manager";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("{action}: cannot connect to {bus}: {source}")]
    Connect {
        action: String,
        bus: Bus,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("{action}: systemd's {method} failed ({name}: {message})")]
    Call {
        action: String,
        method: &'static str,
        name: String,
        message: String,
    },
    #[error("{action}: job {job} ended with result {result:?}")]
    JobFailed {
        action: String,
        job: String,
        result: String,
    },
    #[error("{action}: no answer within {}", humantime::format_duration(*.timeout))]
    Timeout { action: String, timeout: Duration },
}

/// A handle on systemd's manager on one bus.
#[derive(Debug, Clone)]
pub struct Systemd {
    bus: Bus,
}

impl Systemd {
    pub fn new(bus: Bus) -> Self {
        Systemd { bus }
    }

    async fn connect(&self, action: &str) -> Result<Connection, SystemdError> {
        self.bus
            .connect()
            .await
            .map_err(|source| SystemdError::Connect {
                action: action.to_string(),
                bus: self.bus.clone(),
                source: Box::new(source),
            })
    }

    /// `systemctl daemon-reload`.
    pub async fn daemon_reload(&self, timeout: Duration) -> Result<(), SystemdError> {
        let action = "reloading systemd";
        let conn = self.connect(action).await?;
        within(action, timeout, call(&conn, action, "Reload", &())).await?;
        info!("systemd reloaded");
        Ok(())
    }

    /// `systemctl restart UNIT`: queues the restart job ("replace" mode)
    /// and waits until systemd reports it finished with result "done".
    pub async fn restart_unit(&self, unit: &str, timeout: Duration) -> Result<(), SystemdError> {
        let action = format!("restarting {unit}");
        let conn = self.connect(&action).await?;
        within(&action, timeout, async {
            // Subscribe and listen before queueing, or a fast job's
            // JobRemoved could pass unseen.
            call(&conn, &action, "Subscribe", &()).await?;
            let rule = MatchRule::builder()
                .msg_type(zbus::message::Type::Signal)
                .path(SYSTEMD_PATH)
                .interface(SYSTEMD_MANAGER)
                .member("JobRemoved")
                .build()
                .map_err(|e| call_error(&action, "AddMatch", e))?;
            let mut signals = MessageStream::for_match_rule(rule, &conn, NonZeroUsize::new(64))
                .await
                .map_err(|e| call_error(&action, "AddMatch", e))?;
            let reply = call(&conn, &action, "RestartUnit", &(unit, "replace")).await?;
            let job: OwnedObjectPath = reply
                .body()
                .deserialize()
                .map_err(|e| call_error(&action, "RestartUnit", e))?;
            info!(unit, job = %job.as_str(), "restart queued");
            while let Some(msg) = signals.next().await {
                let Ok(msg) = msg else { continue };
                let Ok((_, path, _, result)) = msg
                    .body()
                    .deserialize::<(u32, OwnedObjectPath, String, String)>()
                else {
                    continue;
                };
                if path != job {
                    continue;
                }
                if result == "done" {
                    info!(unit, "unit restarted");
                    return Ok(());
                }
                return Err(SystemdError::JobFailed {
                    action: action.clone(),
                    job: job.to_string(),
                    result,
                });
            }
            Err(call_error(
                &action,
                "RestartUnit",
                zbus::Error::Failure("the bus connection closed".into()),
            ))
        })
        .await
    }
}

async fn within<T>(
    action: &str,
    timeout: Duration,
    fut: impl Future<Output = Result<T, SystemdError>>,
) -> Result<T, SystemdError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(SystemdError::Timeout {
                action: action.to_string(),
                timeout,
            })
        })
}

async fn call<B>(
    conn: &Connection,
    action: &str,
    method: &'static str,
    body: &B,
) -> Result<zbus::Message, SystemdError>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    conn.call_method(
        Some(SYSTEMD_SERVICE),
        SYSTEMD_PATH,
        Some(SYSTEMD_MANAGER),
        method,
        body,
    )
    .await
    .map_err(|e| call_error(action, method, e))
}

fn call_error(action: &str, method: &'static str, e: zbus::Error) -> SystemdError {
    let (name, message) =
        super::dbus::error_parts(&e).unwrap_or_else(|| ("transport".to_string(), e.to_string()));
    SystemdError::Call {
        action: action.to_string(),
        method,
        name,
        message,
    }
}
