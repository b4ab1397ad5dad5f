//! Layers import downwards only (ARCHITECTURE.md): `scripts/layers.sh`, the check that
//! `make lint` runs, finds no `crate::X` used from a folder below X.

use crate::util::Sandbox;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The check's report on the tree at `root` (the repository's own when `None`).
fn layers(root: Option<&std::path::Path>) -> (bool, String) {
    let mut cmd = Command::new("sh");
    cmd.arg(format!("{REPO}/scripts/layers.sh")).arg("-v");
    if let Some(root) = root {
        cmd.env("LAYERS_ROOT", root);
    }
    let out = cmd.output().expect("sh runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn no_import_runs_upwards() {
    let (ok, text) = layers(None);
    assert!(ok, "upward imports:\n{text}");
    assert!(text.contains("0 upward import(s)"), "{text}");
}

/// Every way of spelling an import is read: one line, a group rustfmt split over
/// several lines, nested groups, a path in code, and a `super::` chain that climbs to
/// the crate root; what runs downwards or stays in its layer is not reported.
#[test]
fn the_check_sees_every_spelling_of_an_upward_import() {
    let sb = Sandbox::new();
    let files = [
        ("src/common/mod.rs", "// crate::supervise in a comment\n"),
        (
            "src/config/mod.rs",
            "use crate::{common::{a, b}, config::c};\n",
        ),
        (
            "src/config/split.rs",
            "use crate::{\n    common::{a, b},\n    supervise::machine,\n};\n",
        ),
        ("src/config/climb.rs", "use super::super::control::paths;\n"),
        ("src/config/near.rs", "use super::plan::{x, y};\n"),
        (
            "src/output/code.rs",
            "fn f() {\n    crate::health::probe();\n}\n",
        ),
        ("src/health/mod.rs", "use super::supervise::Event;\n"),
        (
            "src/supervise/deep/x.rs",
            "use super::super::machine::Service;\n",
        ),
        ("src/lib.rs", "use crate::{cli, supervise};\n"),
    ];
    for (path, text) in files {
        let path = sb.path(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
    }
    let (ok, text) = layers(Some(&sb.dir));
    assert!(!ok, "{text}");
    let mut found: Vec<&str> = text.lines().collect();
    found.sort_unstable();
    assert_eq!(
        found,
        [
            "4 upward import(s)",
            "src/config/climb.rs:1: config -> control",
            "src/config/split.rs:1: config -> supervise",
            "src/health/mod.rs:1: health -> supervise",
            "src/output/code.rs:2: output -> health",
        ],
        "{text}"
    );
}
