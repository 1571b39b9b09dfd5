//! Rebooting through systemd-logind over D-Bus.
//!
//! `CanReboot` is asked first: logind answers "yes" only when the caller may
//! reboot without interaction, so "no", "challenge" or "na" become a clear
//! refusal before any reboot is attempted (a plain `Reboot` failure would
//! only say AccessDenied). Then `Reboot(interactive=false)` is called once.
//! The caller persists the boot ID and reason before calling.

use std::fmt;
use std::time::Duration;

use futures::future::BoxFuture;
use tracing::{info, warn};
use zbus::Connection;

const LOGIND_SERVICE: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";

/// D-Bus's own default reply timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Which bus to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (production).
    System,
    /// A bus by address, e.g. `unix:path=/tmp/x/bus` (tests).
    Address(String),
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bus::System => f.write_str("the system bus"),
            Bus::Address(a) => write!(f, "bus {a}"),
        }
    }
}

impl Bus {
    pub(crate) async fn connect(&self) -> Result<Connection, zbus::Error> {
        match self {
            Bus::System => Connection::system().await,
            Bus::Address(a) => zbus::connection::Builder::address(a.as_str()).build().await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("rebooting: cannot connect to {bus}: {source}")]
    Connect {
        bus: Bus,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("rebooting: systemd-logind is not on {bus} ({name}: {message})")]
    LogindAbsent {
        bus: Bus,
        name: String,
        message: String,
    },
    #[error("rebooting: logind refused {method} ({name}: {message})")]
    Refused {
        method: &'static str,
        name: String,
        message: String,
    },
    #[error("rebooting: logind's CanReboot answered {answer:?}, not \"yes\"; not attempting")]
    NotPermitted { answer: String },
    #[error("rebooting: logind's {method} failed ({name}: {message})")]
    Failed {
        method: &'static str,
        name: String,
        message: String,
    },
    #[error("rebooting: logind's {method} did not answer within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { method: &'static str },
    #[error("rebooting: unexpected reply to {method}: {source}")]
    BadReply {
        method: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
}

/// Reboots this machine. A simulated implementation stands in for it in
/// `drydock simulate`.
pub trait Rebooter: Send + Sync {
    /// Asks for the reboot; returns once it was accepted (the machine goes
    /// down some time after).
    fn reboot<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), RebootError>>;
}

/// The real one: logind over D-Bus.
#[derive(Debug, Clone)]
pub struct LogindRebooter {
    bus: Bus,
}

impl LogindRebooter {
    pub fn new(bus: Bus) -> Self {
        LogindRebooter { bus }
    }

    /// The bus it talks to (systemd's manager is on the same one).
    pub(crate) fn bus(&self) -> &Bus {
        &self.bus
    }

    pub(crate) fn system() -> Self {
        LogindRebooter { bus: Bus::System }
    }

    async fn call<B>(
        &self,
        conn: &Connection,
        method: &'static str,
        body: &B,
    ) -> Result<zbus::Message, RebootError>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = conn.call_method(
            Some(LOGIND_SERVICE),
            LOGIND_PATH,
            Some(LOGIND_MANAGER),
            method,
            body,
        );
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Err(_) => Err(RebootError::Timeout { method }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(self.classify(method, e)),
        }
    }

    fn classify(&self, method: &'static str, e: zbus::Error) -> RebootError {
        let Some((name, message)) = super::dbus::error_parts(&e) else {
            return RebootError::Failed {
                method,
                name: "transport".into(),
                message: e.to_string(),
            };
        };
        match name.as_str() {
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner"
            | "org.freedesktop.DBus.Error.UnknownObject" => RebootError::LogindAbsent {
                bus: self.bus.clone(),
                name,
                message,
            },
            "org.freedesktop.DBus.Error.AccessDenied"
            | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired"
            | "org.freedesktop.login1.OperationInProgress"
            | "org.freedesktop.login1.BlockedByInhibitor" => RebootError::Refused {
                method,
                name,
                message,
            },
            _ => RebootError::Failed {
                method,
                name,
                message,
            },
        }
    }
}

impl Rebooter for LogindRebooter {
    fn reboot<'a>(&'a self, reason: &'a str) -> BoxFuture<'a, Result<(), RebootError>> {
        Box::pin(async move {
            let conn = self
                .bus
                .connect()
                .await
                .map_err(|source| RebootError::Connect {
                    bus: self.bus.clone(),
                    source: Box::new(source),
                })?;
            let reply = self.call(&conn, "CanReboot", &()).await?;
            let answer: String =
                reply
                    .body()
                    .deserialize()
                    .map_err(|source| RebootError::BadReply {
                        method: "CanReboot",
                        source: Box::new(source),
                    })?;
            if answer != "yes" {
                warn!(answer = %answer, "logind does not allow a non-interactive reboot");
                return Err(RebootError::NotPermitted { answer });
            }
            info!(reason, "asking logind to reboot: {reason}");
            // interactive = false: never wait for a polkit agent.
            self.call(&conn, "Reboot", &(false,)).await?;
            info!(reason, "logind accepted the reboot");
            Ok(())
        })
    }
}
