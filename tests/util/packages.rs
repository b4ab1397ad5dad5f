//! Third-party programs for the tests that run real daemons (nginx, redis, BusyBox,
//! python's grpcio...). Tests never install anything: `make test` must not change the
//! machine it runs on. A program that is missing skips its test with the reason, and
//! every skip is appended to `SKIPPED`, from which `make test` prints one summary line
//! at the end. Under `ORCH_REQUIRE_PACKAGES=1` (CI, which installs the packages first)
//! a missing program fails the test instead, so that no real-daemon test is skipped
//! there unnoticed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Where skips are recorded, one `test: reason` a line; `make test` empties it first.
pub const SKIPPED: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt");

/// `program` (an absolute path) when it exists; otherwise why the test cannot run.
pub fn ensure(package: &str, program: &str) -> Result<PathBuf, String> {
    if Path::new(program).exists() {
        Ok(PathBuf::from(program))
    } else {
        Err(format!(
            "{program} is missing: install the Debian package {package}"
        ))
    }
}

/// Runs `test` with the program, or skips it (fails it, when packages are required).
pub fn with(package: &str, program: &str, test: impl FnOnce(PathBuf)) {
    if let Some(path) = find(package, program) {
        test(path);
    }
}

/// The program, or None after `missing` has recorded why (or panicked).
pub fn find(package: &str, program: &str) -> Option<PathBuf> {
    ensure(package, program).map_err(|why| missing(&why)).ok()
}

/// A test that cannot run because something it needs is not installed: skipped with
/// `why` (printed and recorded in `SKIPPED`), or failed under `ORCH_REQUIRE_PACKAGES=1`.
pub fn missing(why: &str) {
    let required = std::env::var("ORCH_REQUIRE_PACKAGES").is_ok_and(|v| v == "1");
    skip_or_fail(why, required, Path::new(SKIPPED));
}

fn skip_or_fail(why: &str, required: bool, record: &Path) {
    if required {
        panic!("{why} (ORCH_REQUIRE_PACKAGES=1: a missing package fails the test)");
    }
    eprintln!("skipped: {why}");
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    // One short append per skip: concurrent tests' lines do not mix.
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(record)
        .and_then(|mut f| f.write_all(format!("{test}: {why}\n").as_bytes()));
}

#[test]
fn a_missing_program_skips_with_its_reason_or_fails_when_required() {
    let program = "/nonexistent/orchestrator-test-program";
    let why = ensure("no-such-package", program).unwrap_err();
    assert!(
        why.contains(program) && why.contains("no-such-package"),
        "{why}"
    );
    assert_eq!(ensure("coreutils", "/bin/sh"), Ok(PathBuf::from("/bin/sh")));
    let record = std::env::temp_dir().join(format!("orch-skipped-{}", std::process::id()));
    let _ = std::fs::remove_file(&record);
    skip_or_fail(&why, false, &record);
    let text = std::fs::read_to_string(&record).unwrap_or_default();
    let _ = std::fs::remove_file(&record);
    assert_eq!(
        text,
        format!("util::packages::a_missing_program_skips_with_its_reason_or_fails_when_required: {why}\n")
    );
    let failed = std::panic::catch_unwind(|| skip_or_fail(&why, true, &record));
    let msg = failed.expect_err("a required program that is missing fails the test");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains(program), "{msg}");
    assert!(!record.exists(), "a failure is not recorded as a skip");
}
