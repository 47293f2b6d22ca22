//! What the binary's integration tests share: running `chargpt` in a directory, a scratch text,
//! and the checks every command's success or one-line failure must pass.
// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use assert_cmd::Command;
use std::path::Path;
use tempfile::TempDir;

pub mod server;
pub mod webdriver;

pub const BIN: &str = env!("CARGO_BIN_EXE_chargpt");

pub fn chargpt(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir);
    cmd
}

/// A temporary directory with `small.txt` (3,000 characters of lower-case text).
pub fn workspace() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let line = "the quick brown fox jumps over the lazy dog, and then rests.\n";
    std::fs::write(dir.path().join("small.txt"), line.repeat(50)).unwrap();
    dir
}

/// Runs `args` in `dir` and returns stdout, failing the test (with stderr) if the command fails.
pub fn succeeds(dir: &Path, args: &[&str]) -> String {
    let output = chargpt(dir).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?} failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Runs `args` in `dir`, expecting failure with a single-line message containing `hint`.
pub fn fails(dir: &Path, args: &[&str], hint: &str) -> String {
    let output = chargpt(dir).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "{args:?} succeeded; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(hint),
        "{args:?}: expected {hint:?} in: {stderr}"
    );
    stderr
}
