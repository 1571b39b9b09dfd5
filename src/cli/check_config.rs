//! `drydock check-config`: validate the merged configuration.

use std::process::ExitCode;

use super::Cli;
use crate::config;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print nothing on success.
    #[arg(long, short)]
    pub quiet: bool,
}

pub(crate) fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let (path, explicit) = cli.config_path();
    let files = match config::config_files(&path, explicit) {
        Ok(files) => files,
        Err(e) => {
            eprintln!("drydock: invalid configuration: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    match config::load(&path, explicit) {
        Ok(settings) => {
            if !args.quiet {
                if files.is_empty() {
                    println!("no config files found; using built-in defaults");
                }
                for file in &files {
                    println!("read {}", crate::text::escape(&file.to_string_lossy()));
                }
                println!(
                    "configuration OK: {} protected package patterns, {} maintenance windows, lease group {:?} with {} slot(s)",
                    settings.packages.protect.len(),
                    settings.maintenance.windows.len(),
                    settings.lease.group,
                    settings.lease.concurrency
                );
            }
            // Consistent with the daemon: not joined yet is a state, not an error.
            if !settings.node.kubeconfig.exists() && !args.quiet {
                println!(
                    "note: {} does not exist yet: until the node joins, the daemon holds packages and waits ({})",
                    settings.node.kubeconfig.display(),
                    super::daemon::not_joined_status(&settings.node.kubeconfig)
                );
            }
            for warning in crate::aptgate::check_apt_config(&settings) {
                eprintln!("warning: {warning}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("drydock: invalid configuration: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
