//! drydock's entry point: parse the command line, set up logging, dispatch.

use std::process::ExitCode;

use clap::Parser;
use drydock::cli::{self, Cli};
use drydock::logging;

fn main() -> ExitCode {
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
            eprintln!("drydock: {}", drydock::text::anyhow_chain(&e));
            ExitCode::FAILURE
        }
    }
}
