//! The command line: one file per subcommand. Each returns an exit code;
//! errors reach `main` as `anyhow` with their context.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Settings};
use crate::logging::LogFormat;

pub(crate) mod apt_hook;
pub(crate) mod check_config;
pub(crate) mod cluster_status;
pub(crate) mod completions;
pub(crate) mod control;
pub(crate) mod daemon;
pub(crate) mod history;
pub(crate) mod identity;
pub(crate) mod rbac;
pub(crate) mod reload;
#[cfg(feature = "sim")]
pub(crate) mod sim;
#[cfg(feature = "sim")]
pub(crate) mod simulate;
pub(crate) mod status;

#[derive(Debug, Parser)]
#[command(
    name = "drydock",
    version,
    about = "Patches kubeadm cluster nodes one at a time: holds runtime packages, waits for safety gates, takes a Lease, drains, reboots, verifies",
    propagate_version = true
)]
pub(crate) struct Cli {
    /// Main configuration file; drop-ins are read from PATH.d/*.toml.
    #[arg(long, global = true, value_name = "PATH", env = "DRYDOCK_CONFIG")]
    pub config: Option<PathBuf>,

    /// Use this file descriptor as stderr (the APT hooks: apt's own stderr
    /// arrives as fd 3 while the shell's is /dev/null, so a removed binary's
    /// "not found" stays quiet).
    #[arg(long, global = true, hide = true, value_name = "FD")]
    pub stderr_fd: Option<i32>,

    /// Log format on stderr (under systemd, logs go to journald; `journal`
    /// sends them there in any case).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Validate the merged configuration and print what is wrong.
    CheckConfig(check_config::Args),
    /// APT hooks, run by apt (wired in /etc/apt/apt.conf.d/50drydock).
    #[command(subcommand)]
    AptHook(apt_hook::AptHookCommand),
    /// List recorded apt runs, reboots and upgrades.
    History(history::Args),
    /// Run the agent (the systemd service).
    Daemon(daemon::Args),
    /// Ask the running daemon to re-read its configuration; fails with the reason if it refuses.
    Reload(reload::Args),
    /// Explain what this node is doing and why: reboot need, gates, lease.
    Status(status::Args),
    /// Pause drydock on this node.
    Pause(control::PauseArgs),
    /// Lift a local pause; retry a failed step.
    Resume,
    /// Ask for a reboot of this node (through the gates and the lease).
    Reboot(control::RebootArgs),
    /// Give up this node's Lease slot (after a failure).
    Release(control::ReleaseArgs),
    /// Cluster-wide pause and resume; approving a node's drydock identity.
    #[command(subcommand)]
    Cluster(control::ClusterCommand),
    /// Run a rolling reboot of a simulated cluster, one agent per node, live.
    #[cfg(feature = "sim")]
    Simulate(simulate::Args),
    /// The Kubernetes API simulator used by tests and demos.
    #[cfg(feature = "sim")]
    #[command(subcommand)]
    Sim(SimCommand),
    /// Print the RBAC manifests drydock needs beyond the kubelet's own rights.
    Rbac(rbac::Args),
    /// Print a shell completion script.
    Completions(completions::CompletionsArgs),
    /// Print the drydock(1) or drydock.toml(5) man page (roff).
    Manpage(completions::ManpageArgs),
}

#[cfg(feature = "sim")]
#[derive(Debug, Subcommand)]
pub(crate) enum SimCommand {
    /// Serve a simulated cluster on 127.0.0.1 and write a kubeconfig for it.
    Serve(sim::SimServeArgs),
}

impl Cli {
    pub(crate) fn config_path(&self) -> (PathBuf, bool) {
        match &self.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(config::DEFAULT_CONFIG), false),
        }
    }

    pub(crate) fn load_settings(&self) -> Result<Settings, config::ConfigError> {
        let (path, explicit) = self.config_path();
        config::load(&path, explicit)
    }
}

/// Makes `fd` this process's stderr and closes it. Only descriptors above
/// stderr that are open are accepted.
#[allow(unsafe_code)] // the fd is apt's stderr, inherited for this use
pub(crate) fn adopt_stderr(fd: i32) -> Result<(), String> {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    if fd <= 2 {
        return Err("must be above 2".into());
    }
    nix::fcntl::fcntl(
        // SAFETY: only borrowed for the F_GETFD probe; an fd that is not
        // open makes fcntl fail with EBADF, nothing else happens.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|e| format!("not an open file descriptor: {e}"))?;
    // SAFETY: the descriptor is open (checked above) and nothing else in
    // this process owns it: it was inherited from the shell for this use.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    nix::unistd::dup2_stderr(&owned).map_err(|e| e.to_string())
}

/// Commands that only print a short answer log at warn level.
pub(crate) fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::CheckConfig(_)
        | Command::AptHook(_)
        | Command::History(_)
        | Command::Reload(_) => "warn",
        #[cfg(feature = "sim")]
        Command::Sim(_) => "info",
        #[cfg(feature = "sim")]
        Command::Simulate(_) => "error",
        Command::Daemon(_) => "info",
        Command::Status(_)
        | Command::Pause(_)
        | Command::Resume
        | Command::Reboot(_)
        | Command::Release(_)
        | Command::Cluster(_) => "error",
        Command::Rbac(_) | Command::Completions(_) | Command::Manpage(_) => "warn",
    }
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::CheckConfig(args) => check_config::run(&cli, args),
        #[cfg(feature = "sim")]
        Command::Simulate(args) => simulate::run(args).await,
        Command::Daemon(args) => daemon::run(&cli, args).await,
        Command::Reload(args) => reload::run(&cli, args).await,
        Command::Status(args) => status::run(&cli, args).await,
        Command::Pause(args) => control::pause(&cli, args),
        Command::Resume => control::resume(&cli),
        Command::Reboot(args) => control::reboot(&cli, args),
        Command::Release(args) => control::release(&cli, args),
        Command::Cluster(command) => control::cluster(&cli, command).await,
        Command::Rbac(args) => rbac::run(&cli, args),
        Command::Completions(args) => completions::completions(args),
        Command::Manpage(args) => completions::manpage(args),
        Command::AptHook(command) => Ok(apt_hook::run(&cli, command)),
        Command::History(args) => history::run(&cli, args),
        #[cfg(feature = "sim")]
        Command::Sim(SimCommand::Serve(args)) => {
            sim::serve(args.clone()).await.map(|()| ExitCode::SUCCESS)
        }
    }
}
