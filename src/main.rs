//! The `ares` binary: parses the command line and hands it to the library.

use clap::Parser;

/// mimalloc instead of the C library's allocator: every request allocates (documents,
/// JSON, futures), and glibc's malloc and free were a fifth of a busy server's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    without_transparent_huge_pages();
    ares::cli::run(ares::cli::Cli::parse())
}

/// mimalloc asks the kernel for transparent huge pages on the memory it maps, and a 2 MiB page
/// is resident as soon as one byte of it is touched: an idle server with 10,000 agents held
/// 58 MiB of them. Without them its RSS is 24 MiB lower idle and 40 MiB lower under load, at
/// the same throughput (`docs/performance.md`).
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments and changes only this process's
    // memory policy; a kernel that does not know it answers an error, which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}
