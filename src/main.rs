//! The `ares` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ares::cli::run(ares::cli::Cli::parse())
}
