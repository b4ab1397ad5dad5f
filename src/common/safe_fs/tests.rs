use super::*;
use std::os::unix::fs::symlink;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("orch-safefs-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn mkfifo(p: &Path) {
    let c = cstr(p).unwrap();
    // SAFETY: valid string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn never_writes_through_a_symlink_a_fifo_or_a_hard_link() {
    let d = tmpdir("write");
    let target = d.join("target");
    std::fs::write(&target, "secret").unwrap();
    symlink(&target, d.join("link")).unwrap();
    mkfifo(&d.join("fifo"));
    std::fs::hard_link(&target, d.join("hard")).unwrap();
    let dir = Dir::create(&d, 0o755).unwrap();
    assert!(dir.open_append("link", 0o600).is_err());
    assert!(open_lock(&d.join("link"), 0o600).is_err());
    // A FIFO with no reader would block a plain open forever: refused at once.
    let err = dir.open_append("fifo", 0o600).unwrap_err().to_string();
    assert!(
        err.contains("FIFO") || err.contains("No such device"),
        "{err}"
    );
    assert!(open_regular(&d.join("fifo"), true).is_err());
    assert!(dir.open_append("hard", 0o600).is_err());
    // create_new replaces the symlink instead of following it.
    drop(dir.create_new("link", 0o600).unwrap());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret");
    assert!(!std::fs::symlink_metadata(d.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn shared_verdicts_judge_each_file_afresh_and_follow_links() {
    if euid() != 0 {
        eprintln!("skipped: needs root to own files as others");
        return;
    }
    let base = trusted_test_base();
    if untrusted(&base).is_some() {
        eprintln!("skipped: no trusted directory to work in");
        return;
    }
    let d = base.join(format!("orch-verdicts-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (f, g) = (d.join("f"), d.join("g"));
    for p in [&f, &g] {
        std::fs::write(p, "x").unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let mut seen = Verdicts::default();
    assert_eq!(untrusted_with(&f, &mut seen), None);
    // The directories are remembered; the file itself is not.
    std::os::unix::fs::chown(&g, Some(65534), None).unwrap();
    assert!(untrusted_with(&g, &mut seen).unwrap().why.contains("65534"));
    // A link in a trusted directory to a file in nobody's directory: the resolved
    // chain counts.
    let t = tmpdir("verdicts");
    let target = t.join("bin");
    std::fs::write(&target, "x").unwrap();
    std::os::unix::fs::chown(&t, Some(65534), None).unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let u = untrusted_with(&link, &mut seen).expect("nobody's directory");
    assert_eq!(u.path, t);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn devices_are_refused_without_reading() {
    assert!(open_regular(Path::new("/dev/zero"), true).is_err());
}

#[test]
fn strict_modes_judges_the_whole_chain() {
    if euid() != 0 {
        eprintln!("skipped: needs root to own files as others");
        return;
    }
    // Under /tmp (sticky, world-writable): a root-owned directory there passes, as
    // what is in it; a nobody-owned one, a file of nobody's and /tmp itself do not.
    let d = tmpdir("strict");
    let f = d.join("f");
    std::fs::write(&f, "x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(untrusted(&f), None);
    assert_eq!(untrusted(&d), None);
    let u = untrusted(Path::new("/tmp")).expect("/tmp itself is world-writable");
    assert!(u.why.contains("writable by others"), "{u}");
    std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
    let u = untrusted(&f).unwrap();
    assert!(u.why.contains("fix: chown root"), "{u}");
    std::os::unix::fs::chown(&f, Some(0), None).unwrap();
    std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
    let u = untrusted(&f).unwrap();
    assert_eq!(u.path, d);
    std::os::unix::fs::chown(&d, Some(0), None).unwrap();
    // Writable by others without the sticky bit: refused, with the fix.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
    let u = untrusted(&f).unwrap();
    assert_eq!(u.path, d);
    assert!(u.why.contains("fix: chmod go-w"), "{u}");
    // A sticky one of root's passes above a root-owned entry only.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(untrusted(&f), None);
    std::os::unix::fs::chown(&f, Some(65534), None).unwrap();
    assert!(untrusted(&f).is_some());
    // A symlink an attacker owns in a sticky directory, to a trusted file.
    std::os::unix::fs::chown(&f, Some(0), None).unwrap();
    let link = d.join("link");
    symlink(&f, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(65534), None).unwrap();
    assert_eq!(untrusted(&link).unwrap().path, link);
    // A file owned by someone else, in trusted directories.
    let base = trusted_test_base();
    if untrusted(&base).is_none() {
        let g = base.join(format!("orch-strict-{}", std::process::id()));
        std::fs::write(&g, "x").unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(untrusted(&g), None);
        std::os::unix::fs::chown(&g, Some(65534), None).unwrap();
        assert!(untrusted(&g).unwrap().why.contains("owned by uid 65534"));
        std::os::unix::fs::chown(&g, Some(0), None).unwrap();
        std::fs::set_permissions(&g, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(untrusted(&g).unwrap().why.contains("group"));
        let _ = std::fs::remove_file(&g);
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn dir_chain_refuses_a_planted_symlink() {
    if euid() != 0 {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let d = tmpdir("chain");
    let user = d.join("home");
    std::fs::create_dir(&user).unwrap();
    std::os::unix::fs::chown(&user, Some(65534), Some(65534)).unwrap();
    let victim = d.join("victim");
    std::fs::create_dir(&victim).unwrap();
    symlink(&victim, user.join("data")).unwrap();
    let err = create_dir_chain(&user.join("data/sub"), 0o750, Some((65534, 65534)));
    assert!(err.is_err());
    assert!(!victim.join("sub").exists());
    // A plain path is created and handed over.
    let ok = user.join("fresh/sub");
    create_dir_chain(&ok, 0o750, Some((65534, 65534))).unwrap();
    assert_eq!(std::fs::metadata(&ok).unwrap().uid(), 65534);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_unix_socket_is_born_with_its_mode_whatever_the_umask() {
    let d = tmpdir("bind");
    for mode in [0o600, 0o660, 0o666] {
        let p = d.join(format!("s{mode:o}"));
        let fd = unix_socket(libc::SOCK_STREAM).unwrap();
        bind_unix(fd.as_raw_fd(), &p, mode).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()));
        assert_eq!(m.permissions().mode() & 0o7777, mode);
    }
    // The process's own umask is left alone.
    // SAFETY: umask has no preconditions; set back at once.
    let now = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(now) };
    assert_ne!(now, 0o177, "the bind's umask leaked to the process");
    assert_ne!(now, 0o111);
    // An existing entry (a symlink an attacker planted) is never bound through.
    let victim = d.join("victim");
    std::fs::write(&victim, "x").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim, d.join("link")).unwrap();
    let fd = unix_socket(libc::SOCK_STREAM).unwrap();
    assert!(bind_unix(fd.as_raw_fd(), &d.join("link"), 0o666).is_err());
    assert_eq!(
        std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_socket_directory_others_control_is_refused() {
    if euid() != 0 {
        eprintln!("skipped: needs root to own directories as others");
        return;
    }
    let d = tmpdir("sockdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Created when missing, root's and 0755: fine; right in /tmp: fine.
    socket_dir(&d.join("new/s.sock")).unwrap();
    let m = std::fs::metadata(d.join("new")).unwrap();
    assert_eq!((m.uid(), m.permissions().mode() & 0o777), (0, 0o755));
    socket_dir(Path::new("/tmp/s.sock")).unwrap();
    // Nobody's, or writable by others without the sticky bit: refused.
    std::os::unix::fs::chown(d.join("new"), Some(65534), None).unwrap();
    let err = socket_dir(&d.join("new/s.sock")).unwrap_err().to_string();
    assert!(
        err.contains("socket directory refused") && err.contains("65534"),
        "{err}"
    );
    std::os::unix::fs::chown(d.join("new"), Some(0), None).unwrap();
    std::fs::set_permissions(d.join("new"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = socket_dir(&d.join("new/s.sock")).unwrap_err().to_string();
    assert!(err.contains("chmod go-w"), "{err}");
    // A symlink planted in a directory nobody owns is not followed to create.
    let theirs = d.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
    symlink("/etc", theirs.join("etc")).unwrap();
    assert!(socket_dir(&theirs.join("etc/sub/s.sock")).is_err());
    assert!(!Path::new("/etc/sub").exists());
    let _ = std::fs::remove_dir_all(&d);
}
