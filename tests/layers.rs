//! Layers import downwards only (ARCHITECTURE.md): `scripts/layers.sh`, the check that
//! `make lint` runs, finds no `crate::X` used from a folder below X.

use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn no_import_runs_upwards() {
    let out = Command::new("sh")
        .arg(format!("{REPO}/scripts/layers.sh"))
        .arg("-v")
        .output()
        .expect("sh runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "upward imports:\n{text}");
    assert!(text.contains("0 upward import(s)"), "{text}");
}
