//! drydock: keeps a kubeadm cluster patched, one node at a time.
//!
//! Modules follow the data: config -> host/cluster observations -> gates ->
//! lease -> drain -> reboot/upgrade -> verify -> report. `agent` drives them;
//! nothing below `agent` imports it. `sim` is the Kubernetes API simulator
//! used by tests and `drydock simulate`, built only with the `sim` feature
//! (on by default, off for the .deb); `cli` is the command line.
//!
//! Everything is private to the crate but two things: [`main`], the
//! binary's entry point, and [`testing`], what the tests, benches and fuzz
//! targets use (not a stable API).

mod agent;
mod aptgate;
mod cli;
mod cluster;
mod config;
mod fileread;
mod gates;
mod host;
mod logging;
mod phase;
mod report;
#[cfg(feature = "sim")]
mod sim;
#[cfg(feature = "sim")]
mod simulate;
mod store;
pub mod testing;
mod text;
mod upgrade;
mod verify;

use std::process::ExitCode;

use clap::Parser;

use cli::Cli;

/// The `drydock` binary: parse the command line, set up logging, dispatch.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(fd) = cli.stderr_fd
        && let Err(e) = cli::adopt_stderr(fd)
    {
        eprintln!("drydock: --stderr-fd {fd}: {e}");
        return ExitCode::FAILURE;
    }
    let target = logging::choose_target(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        logging::stderr_identity(),
        cli.log_format,
    );
    logging::init(target, cli::default_log_level(&cli.command));
    // The APT hooks run on every dpkg run: no async runtime to start.
    if let cli::Command::AptHook(command) = &cli.command {
        return cli::apt_hook::run(&cli, command);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drydock: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each cause once, escaped and bounded.
            eprintln!("drydock: {}", text::anyhow_chain(&e));
            ExitCode::FAILURE
        }
    }
}
