//! The `ares` binary: parses the command line and hands it to the library.

use clap::Parser;

/// mimalloc instead of the C library's allocator: every request allocates (documents,
/// JSON, futures), and glibc's malloc and free were a fifth of a busy server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ares::cli::run(ares::cli::Cli::parse())
}
