//! drydock's entry point; the library does the work (`drydock::main`).

use std::process::ExitCode;

fn main() -> ExitCode {
    drydock::main()
}
