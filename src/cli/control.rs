//! Operator requests: `pause`, `resume`, `reboot`, `release --force`, and
//! the cluster-wide `cluster pause|resume`. Local ones are written to the
//! state store for the daemon to act on (and wake it).

use std::process::ExitCode;

use anyhow::Context;

use super::Cli;
use crate::agent::AgentState;
use crate::agent::driver::keys;
use crate::cluster::annotations;
use crate::config::Settings;
use crate::gates::paused;
use crate::host::sentinel;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub(crate) struct PauseArgs {
    /// Why (shown in `drydock status` and the systemd status line).
    #[arg(long, value_parser = crate::text::ReasonParser)]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RebootArgs {
    /// Why this node should reboot.
    #[arg(long, default_value = "requested with drydock reboot", value_parser = crate::text::ReasonParser)]
    pub reason: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReleaseArgs {
    /// Give up the Lease slot even though the node failed (it stays cordoned).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ClusterCommand {
    /// Pause drydock on every node (annotation on the drydock Namespace).
    Pause(PauseArgs),
    /// Lift a cluster-wide pause and a fleet halt.
    Resume,
    /// Every node's state, lease, blocking gate and last report (`--json` too).
    Status(super::cluster_status::Args),
    /// Approve a node's pending drydock identity request (as the
    /// control-plane daemons do): only exactly drydock:node:NODE, asked by
    /// the node itself.
    Approve(super::identity::ApproveArgs),
    /// Set the Kubernetes version every node upgrades to (validated first).
    SetVersion(SetVersionArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct SetVersionArgs {
    /// The target, like v1.35.2: at most one minor above the control plane, never lower.
    #[arg(value_name = "VERSION")]
    pub target: String,
}

fn open(settings: &Settings) -> anyhow::Result<Store> {
    Store::open(&settings.node.state_db).context("opening the state store")
}

fn nudge(settings: &Settings) {
    let _ = crate::aptgate::wake_daemon(settings);
}

pub(crate) fn pause(cli: &Cli, args: &PauseArgs) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings()?;
    paused::pause(&open(&settings)?, &args.reason)?;
    nudge(&settings);
    println!("paused this node: {}", args.reason);
    Ok(ExitCode::SUCCESS)
}

/// The persisted agent state, for the CLI's checks.
fn agent_state(store: &Store) -> anyhow::Result<AgentState> {
    Ok(store
        .current_state::<AgentState>()
        .context("reading the agent state")?
        .map_or(AgentState::Idle, |(s, _)| s))
}

/// Lifts a local pause and asks a failed agent to go back to the step the
/// failure interrupted. The request carries its time: the agent honours it
/// only for a failure that happened before it, never a later one.
pub(crate) fn resume(cli: &Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings()?;
    let store = open(&settings)?;
    let was_paused = paused::resume(&store)?;
    let state = agent_state(&store)?;
    let AgentState::Failed {
        step,
        error,
        slot_held,
        ..
    } = &state
    else {
        if was_paused {
            nudge(&settings);
            println!("resumed this node (local pause lifted); nothing had failed");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "drydock: this node is not failed (it is {}); there is nothing to resume",
            state.name()
        );
        return Ok(ExitCode::from(1));
    };
    store.write(keys::RESUME_REQUESTED, &jiff::Timestamp::now())?;
    nudge(&settings);
    if was_paused {
        println!("local pause lifted");
    }
    println!("resume requested: the node failed at {step} ({error}) and goes back to that step");
    if !*slot_held {
        println!("it no longer holds a lease slot: it waits for the gates and a slot first");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn reboot(cli: &Cli, args: &RebootArgs) -> anyhow::Result<ExitCode> {
    let settings = cli.load_settings()?;
    sentinel::request_reboot(&open(&settings)?, &args.reason)?;
    nudge(&settings);
    println!("reboot requested; it waits for the gates and the lease like any other");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn release(cli: &Cli, args: &ReleaseArgs) -> anyhow::Result<ExitCode> {
    if !args.force {
        eprintln!(
            "drydock: the daemon releases the lease itself; use --force to give it up from a failed node"
        );
        return Ok(ExitCode::from(2));
    }
    let settings = cli.load_settings()?;
    let store = open(&settings)?;
    let state = agent_state(&store)?;
    if !matches!(state, AgentState::Failed { .. }) {
        eprintln!(
            "drydock: this node is not failed (it is {}); the daemon releases its lease itself",
            state.name()
        );
        return Ok(ExitCode::from(1));
    }
    let Some(slot) = state.held_slot() else {
        eprintln!("drydock: this failed node holds no lease slot; there is nothing to release");
        return Ok(ExitCode::from(1));
    };
    store.write(keys::FORCE_RELEASE, &jiff::Timestamp::now())?;
    nudge(&settings);
    println!("release of lease {slot} requested; the node stays cordoned until you uncordon it");
    Ok(ExitCode::SUCCESS)
}

/// `<user> on <host>` for the record of who paused: the sudo user when
/// run through sudo.
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown host".into());
    format!("{user} on {host}")
}

pub(crate) async fn cluster(cli: &Cli, command: &ClusterCommand) -> anyhow::Result<ExitCode> {
    if let ClusterCommand::Approve(args) = command {
        return super::identity::approve(cli, args).await;
    }
    let settings = cli.load_settings()?;
    // The drydock Namespace is shared: the drydock identity writes it.
    let client = super::identity::current_client(&settings).await?;
    let ns = &settings.lease.namespace;
    match command {
        ClusterCommand::Status(args) => {
            return super::cluster_status::run(&settings, &client, args).await;
        }
        ClusterCommand::Pause(args) => {
            annotations::pause_cluster_by(&client, ns, &args.reason, Some(&operator())).await?;
            println!("paused drydock cluster-wide: {}", args.reason);
        }
        ClusterCommand::Resume => {
            annotations::resume_cluster(&client, ns).await?;
            annotations::clear_halt(&client, ns).await?;
            println!("cluster-wide pause and halt lifted");
        }
        ClusterCommand::Approve(_) => unreachable!("handled above"),
        ClusterCommand::SetVersion(args) => {
            let to = crate::cluster::versions::set_target(&client, ns, &args.target).await?;
            println!(
                "Kubernetes target set to {to}; nodes upgrade one at a time, control planes first"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod set_version_tests {
    use clap::{CommandFactory, Parser};

    use super::super::{Cli, Command};
    use super::ClusterCommand;

    #[test]
    fn set_version_parses_beside_the_global_version_flag() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["drydock", "cluster", "set-version", "v1.35.2"]).unwrap();
        let Command::Cluster(ClusterCommand::SetVersion(args)) = cli.command else {
            panic!("not set-version");
        };
        assert_eq!(args.target, "v1.35.2");
    }
}
