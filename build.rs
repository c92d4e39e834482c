//! Links the release binary for the memory it keeps resident (`docs/performance.md`, "Code laid
//! out by use"): the functions a server runs come first, packed together in the order of
//! `bench/link-order.txt` (made by `bench/link-order`), so that the pages of code it keeps
//! resident are the pages it uses; and its relative relocations are packed (`DT_RELR`), a
//! table of 36 KB where 3 MB of them were read at start and kept mapped.
//!
//! Only for release builds linked by LLD, the linker of Rust's own x86_64 Linux toolchains since
//! 1.90. `ARES_LINK_ORDER=off` leaves the layout to the linker; a name the file lists and the
//! build does not define (another toolchain, other dependency versions) is skipped: the layout
//! then only loses its gain. Packed relocations need glibc 2.36 where the binary runs, so they
//! are used only where the build's own glibc is 2.36 or later (its binaries need nearly that
//! glibc anyway), and `ARES_PACK_RELOCS=off` leaves them unpacked, for a binary meant for an
//! older system.

use std::path::Path;
use std::process::Command;

const ORDER: &str = "bench/link-order.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ARES_LINK_ORDER");
    println!("cargo:rerun-if-env-changed=ARES_PACK_RELOCS");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let off = |k: &str| std::env::var(k).is_ok_and(|v| v == "off" || v == "0");
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
    if !off("ARES_LINK_ORDER") && Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER).is_file() {
        // Not watched when missing: cargo would run this script again on every build.
        println!("cargo:rerun-if-changed={ORDER}");
        // Relative to the package, where the linker runs: checkouts sharing a target directory
        // share this script's output too, and an absolute path would name another checkout.
        println!("cargo:rustc-link-arg-bin=ares=-Wl,--symbol-ordering-file={ORDER}");
        println!("cargo:rustc-link-arg-bin=ares=-Wl,--no-warn-symbol-ordering");
    }
    if !off("ARES_PACK_RELOCS") && glibc_minor().is_some_and(|m| m >= 36) {
        println!("cargo:rustc-link-arg-bin=ares=-Wl,-z,pack-relative-relocs");
    }
}

/// The minor version of the build's glibc (`getconf GNU_LIBC_VERSION`: `glibc 2.36`), `None`
/// when it cannot tell.
fn glibc_minor() -> Option<u32> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().strip_prefix("glibc 2.")?;
    version.split('.').next()?.parse().ok()
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
