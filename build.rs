//! Lays out the release binary's code: the functions a server runs come first, packed together
//! in the order of `bench/link-order.txt` (made by `bench/link-order`), so that the pages of
//! code it keeps resident are the pages it uses (`docs/performance.md`, "Code laid out by use").
//!
//! Only for release builds linked by LLD, the linker of Rust's own x86_64 Linux toolchains since
//! 1.90; `ARES_LINK_ORDER=off` leaves the layout to the linker. A name the file lists and the
//! build does not define (another toolchain, other dependency versions) is skipped: the layout
//! then only loses its gain.

use std::path::Path;
use std::process::Command;

const ORDER: &str = "bench/link-order.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ARES_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    if std::env::var("ARES_LINK_ORDER").is_ok_and(|v| v == "off" || v == "0") {
        return;
    }
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let target = var("TARGET") == "x86_64-unknown-linux-gnu";
    // A linker of one's own (the variable, or `-C linker` in the flags) may not be LLD.
    let own_linker = std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || ["linker", "link-self-contained"]
            .iter()
            .any(|f| var("CARGO_ENCODED_RUSTFLAGS").contains(f));
    if !release || !target || own_linker || !rustc_links_with_lld() {
        return;
    }
    if Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER).is_file() {
        // Not watched when missing: cargo would run this script again on every build.
        println!("cargo:rerun-if-changed={ORDER}");
        // Relative to the package, where the linker runs: checkouts sharing a target directory
        // share this script's output too, and an absolute path would name another checkout.
        println!("cargo:rustc-link-arg-bin=ares=-Wl,--symbol-ordering-file={ORDER}");
        println!("cargo:rustc-link-arg-bin=ares=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether this rustc links x86_64 Linux binaries with its own LLD by default: 1.90 or later,
/// with `gcc-ld/ld.lld` in its sysroot (a distribution's rustc may ship without it).
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = |args: &[&str]| {
        Command::new(&rustc)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let minor = out(&["--version"]).and_then(|v| {
        let version = v.split_whitespace().nth(1)?.to_string();
        let mut parts = version.split('.');
        (parts.next()? == "1").then_some(())?;
        parts.next()?.parse::<u32>().ok()
    });
    let lld = out(&["--print", "sysroot"]).is_some_and(|root| {
        Path::new(&root)
            .join("lib/rustlib/x86_64-unknown-linux-gnu/bin/gcc-ld/ld.lld")
            .is_file()
    });
    minor.is_some_and(|m| m >= 90) && lld
}
