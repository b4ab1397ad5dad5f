use super::*;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

fn path_of(dir: &Path, service: &str, n: u32) -> PathBuf {
    dir.join(name_of(service, n))
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("orch-logfiles-{}-{tag}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    d
}

fn lines_in(dir: &Path, service: &str, max: u32) -> Vec<u64> {
    let mut out = Vec::new();
    for n in (0..=max).rev() {
        if let Ok(s) = fs::read_to_string(path_of(dir, service, n)) {
            out.extend(s.lines().map(|l| l.parse::<u64>().unwrap()));
        }
    }
    out
}

#[test]
fn file_numbers() {
    assert_eq!(log_file_number("web.log"), Some(0));
    assert_eq!(log_file_number("web.log.3"), Some(3));
    assert_eq!(log_file_number("web.log.x"), None);
    assert_eq!(log_file_number("orchestrator.log"), None);
    assert_eq!(log_file_number("orchestrator.log.1"), None);
    assert_eq!(log_file_number("notes.txt"), None);
}

#[test]
fn rotates_without_splitting_losing_or_duplicating() {
    let dir = tmpdir("rotate");
    let mut lf = LogFiles::new(FileConfig {
        dir: dir.clone(),
        max_bytes: 1000,
        max_files: 100,
        max_total: None,
    });
    let svc: Arc<str> = "svc".into();
    let lost = Arc::new(AtomicU64::new(0));
    for i in 0..5000u64 {
        lf.write(&svc, format!("{i}\n").as_bytes(), &lost);
    }
    lf.flush();
    assert_eq!(lines_in(&dir, "svc", 100), (0..5000).collect::<Vec<_>>());
    for n in 0..=100 {
        let p = path_of(&dir, "svc", n);
        if p.exists() {
            assert!(fs::metadata(&p).unwrap().len() <= 1000);
            assert!(fs::read_to_string(&p).unwrap().ends_with('\n'));
        }
    }
    assert_eq!(lost.load(Ordering::Relaxed), 0);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn keeps_only_max_files_and_the_newest_lines() {
    // 5-byte lines, 100-byte files: each file holds exactly 20 lines, and 1000
    // lines fill 50 files, of which the active one and `max_files` rotated stay.
    for max_files in [1u32, 2, 5] {
        let dir = tmpdir(&format!("keep{max_files}"));
        let mut lf = LogFiles::new(FileConfig {
            dir: dir.clone(),
            max_bytes: 100,
            max_files,
            max_total: None,
        });
        let svc: Arc<str> = "svc".into();
        let lost = Arc::new(AtomicU64::new(0));
        for i in 0..1000u64 {
            lf.write(&svc, format!("{i:04}\n").as_bytes(), &lost);
        }
        lf.flush();
        for n in 0..=max_files {
            let len = fs::metadata(path_of(&dir, "svc", n)).map_or(0, |m| m.len());
            assert_eq!(len, 100, "svc.log.{n}");
        }
        assert!(!path_of(&dir, "svc", max_files + 1).exists());
        let kept = 20 * (u64::from(max_files) + 1);
        assert_eq!(
            lines_in(&dir, "svc", max_files + 1),
            (1000 - kept..1000).collect::<Vec<_>>(),
            "max_files {max_files}: the newest {kept} lines"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn total_cap_deletes_oldest_rotated_first() {
    let dir = tmpdir("cap");
    let mut lf = LogFiles::new(FileConfig {
        dir: dir.clone(),
        max_bytes: 1000,
        max_files: 50,
        max_total: Some(5000),
    });
    let lost = Arc::new(AtomicU64::new(0));
    for i in 0..20_000u64 {
        let svc: Arc<str> = if i % 2 == 0 { "a".into() } else { "b".into() };
        lf.write(&svc, format!("{i:08}\n").as_bytes(), &lost);
    }
    lf.flush();
    let total: u64 = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= 5000, "{total}");
    // The newest lines of each service are still there.
    assert_eq!(*lines_in(&dir, "a", 50).last().unwrap(), 19_998);
    assert_eq!(*lines_in(&dir, "b", 50).last().unwrap(), 19_999);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn unwritable_directory_counts_lines() {
    let dir = tmpdir("unwritable");
    fs::write(&dir, "a file where the directory should be").unwrap();
    let mut lf = LogFiles::new(FileConfig {
        dir: dir.clone(),
        max_bytes: 1000,
        max_files: 2,
        max_total: None,
    });
    let svc: Arc<str> = "svc".into();
    let lost = Arc::new(AtomicU64::new(0));
    for i in 0..10u64 {
        lf.write(&svc, format!("{i}\n").as_bytes(), &lost);
    }
    lf.flush();
    assert_eq!(lost.load(Ordering::Relaxed), 10);
    let _ = fs::remove_file(&dir);
}

#[test]
fn a_planted_symlink_or_fifo_is_never_written_through() {
    let dir = tmpdir("planted");
    fs::create_dir_all(&dir).unwrap();
    let target = dir.join("root-only");
    fs::write(&target, "secret\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.join("app.log")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("jam.log").into_os_string().into_vec()).unwrap();
    // SAFETY: valid string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
    let mut lf = LogFiles::new(FileConfig {
        dir: dir.clone(),
        max_bytes: 1000,
        max_files: 2,
        max_total: None,
    });
    let lost = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    for svc in ["app", "jam", "ok"] {
        lf.write(&svc.into(), b"line\n", &lost);
    }
    // A FIFO with no reader would block a plain open() forever.
    lf.flush();
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    assert_eq!(fs::read_to_string(&target).unwrap(), "secret\n");
    assert_eq!(lost.load(Ordering::Relaxed), 2, "app and jam counted");
    assert_eq!(fs::read_to_string(dir.join("ok.log")).unwrap(), "line\n");
    // Rotation renames the link itself, never what it points to.
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn daemon_log_keeps_the_cap_line_by_line_within_one_write() {
    let dir = tmpdir("daemonlines");
    let cfg = FileConfig {
        dir: dir.clone(),
        max_bytes: 1000,
        max_files: 100,
        max_total: None,
    };
    let mut log = DaemonLog::open(&cfg).unwrap();
    // SAFETY: dup of stderr, restored below: rotation moves descriptor 2.
    let saved = unsafe { libc::dup(2) };
    // One write of 50 KB of numbered 10-byte lines, as the sink hands a batch over;
    // on a thread, so that a write that never ends fails the test instead of
    // hanging it.
    let batch: String = (0..5000u64).map(|i| format!("{i:09}\n")).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(log.write_all(batch.as_bytes()).map_err(|e| e.to_string()));
    });
    let written = rx.recv_timeout(std::time::Duration::from_secs(30));
    // SAFETY: restore stderr.
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
    assert_eq!(written, Ok(Ok(())), "the write never ended, or failed");
    let mut lines = Vec::new();
    for n in (0..=100).rev() {
        let p = dir.join(name_of("orchestrator", n));
        if let Ok(s) = fs::read_to_string(&p) {
            assert!(s.len() <= 1000, "{}: {} bytes", p.display(), s.len());
            assert!(s.ends_with('\n'));
            lines.extend(s.lines().map(|l| l.parse::<u64>().unwrap()));
        }
    }
    assert_eq!(lines, (0..5000).collect::<Vec<_>>());
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn reopen_follows_a_renamed_file_and_recounts_the_total() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("reopen");
    let mut lf = LogFiles::new(FileConfig {
        dir: dir.clone(),
        max_bytes: 0,
        max_files: 5,
        max_total: Some(1_000_000),
    });
    let svc: Arc<str> = "svc".into();
    let lost = Arc::new(AtomicU64::new(0));
    for i in 0..100u64 {
        lf.write(&svc, format!("{i:09}\n").as_bytes(), &lost);
    }
    lf.flush();
    // log_max_bytes 0: no rotation of our own.
    assert_eq!(fs::metadata(path_of(&dir, "svc", 0)).unwrap().len(), 1000);
    assert!(!path_of(&dir, "svc", 1).exists());
    // logrotate renames the file to a name of its own (not counted), and a line is
    // still buffered: it goes to the file it was written for.
    fs::rename(path_of(&dir, "svc", 0), dir.join("svc.log-20261207")).unwrap();
    lf.write(&svc, b"000000100\n", &lost);
    lf.reopen();
    assert_eq!(lf.total, 0);
    assert_eq!(lf.active[&svc].size, 0);
    lf.write(&svc, b"000000101\n", &lost);
    lf.flush();
    assert_eq!(lines_in(&dir, "svc", 0), vec![101]);
    let old = fs::read_to_string(dir.join("svc.log-20261207")).unwrap();
    assert_eq!(old.lines().count(), 101);
    let mode = fs::metadata(path_of(&dir, "svc", 0))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    // A file that stands there already is appended to, never truncated, and its
    // size is the opened file's.
    fs::write(path_of(&dir, "svc", 0), "000000007\n000000008\n").unwrap();
    lf.reopen();
    assert_eq!(lf.active[&svc].size, 20);
    assert_eq!(lf.total, 20);
    lf.write(&svc, b"000000102\n", &lost);
    lf.flush();
    assert_eq!(lines_in(&dir, "svc", 0), vec![7, 8, 102]);
    assert_eq!(lost.load(Ordering::Relaxed), 0);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn daemon_log_is_private_and_rotated() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("daemonlog");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("orchestrator.log"), "old\n").unwrap();
    fs::set_permissions(
        dir.join("orchestrator.log"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let cfg = FileConfig {
        dir: dir.clone(),
        max_bytes: 100,
        max_files: 2,
        max_total: None,
    };
    let mut log = DaemonLog::open(&cfg).unwrap();
    // Keep descriptor 2 of the test process: rotation moves it.
    // SAFETY: dup of stderr.
    let saved = unsafe { libc::dup(2) };
    for i in 0..100 {
        log.write_all(format!("{i:09}\n").as_bytes()).unwrap();
    }
    // SAFETY: restore stderr.
    unsafe {
        libc::dup2(saved, 2);
        libc::close(saved);
    }
    let mode = fs::metadata(dir.join("orchestrator.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let total: u64 = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(total <= 300, "{total}");
    assert!(!dir.join("orchestrator.log.3").exists());
    let _ = fs::remove_dir_all(&dir);
    // A symlink in its place is refused.
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", dir.join("orchestrator.log")).unwrap();
    assert!(DaemonLog::open(&cfg).is_err());
    let _ = fs::remove_dir_all(&dir);
}
