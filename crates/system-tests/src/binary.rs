//! The `flotilla` binary the systems run: `target/<profile>/flotilla`, beside the test
//! executable's `deps` directory. If it is missing, or older than a file of the workspace's
//! sources (`crates/`, `services/`, the root manifest and lock file), it is built once per test
//! process with `cargo build -p flotilla --bin flotilla`: on a fresh clone
//! `cargo test -p flotilla-system-tests` builds only this crate, and after an edit to a
//! service the tests must not run yesterday's binary. Under `cargo test --workspace` the
//! binary was just built (the cli's own tests need it), so nothing is built twice.
//!
//! `CARGO_BIN_EXE_flotilla` would do only for the binary's own package's tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of the up-to-date `flotilla` binary.
pub fn flotilla() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(build)
}

fn build() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let exe = std::env::current_exe().expect("the test executable");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let profile = profile_dir
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a profile directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let binary = profile_dir.join(format!("flotilla{}", std::env::consts::EXE_SUFFIX));
    if fresh(&binary, &workspace) {
        return binary;
    }
    let manifest = workspace.join("Cargo.toml");
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "-p", "flotilla", "--bin", "flotilla"])
        .arg("--manifest-path")
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir);
    match profile {
        // `cargo test` builds with the `test` profile, which puts its files in `debug`.
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let output = command.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build -p flotilla failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(binary.is_file(), "no binary at {}", binary.display());
    binary
}

/// Whether `binary` exists and is newer than every source file of the workspace at `root`.
fn fresh(binary: &Path, root: &Path) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return false;
    };
    let mut pending: Vec<PathBuf> = vec![root.join("crates"), root.join("services")];
    let mut newer = ["Cargo.toml", "Cargo.lock"]
        .iter()
        .any(|file| modified_after(&root.join(file), built));
    while let Some(dir) = pending.pop() {
        if newer {
            break;
        }
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || name == "target" {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(path);
            } else if modified_after(&path, built) {
                newer = true;
                break;
            }
        }
    }
    !newer
}

fn modified_after(path: &Path, time: std::time::SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|modified| modified > time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn write(path: &Path, at: SystemTime) {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
        let file = std::fs::File::create(path).expect("file");
        file.set_modified(at).expect("mtime");
    }

    #[test]
    fn a_binary_is_fresh_only_when_newer_than_every_source() {
        let root = tempfile::tempdir().expect("temp dir");
        let root = root.path();
        let now = SystemTime::now();
        let binary = root.join("target/debug/flotilla");
        assert!(!fresh(&binary, root), "a missing binary is not fresh");
        write(&root.join("Cargo.toml"), now - Duration::from_secs(60));
        write(
            &root.join("crates/kit/src/lib.rs"),
            now - Duration::from_secs(60),
        );
        write(
            &root.join("target/debug/flotilla"),
            now - Duration::from_secs(30),
        );
        assert!(fresh(&binary, root));
        // Build outputs and hidden files do not count.
        write(&root.join("crates/kit/target/x"), now);
        write(&root.join("services/order/.swp"), now);
        assert!(fresh(&binary, root));
        write(&root.join("services/order/src/lib.rs"), now);
        assert!(!fresh(&binary, root), "an edited service makes it stale");
    }
}
