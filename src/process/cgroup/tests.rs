//! Unit tests of `cgroup`.

use super::*;

const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
36 31 0:33 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

#[test]
fn parses_hybrid_mountinfo() {
    let m = parse_mountinfo(HYBRID);
    assert_eq!(m.len(), 4);
    assert_eq!(m[0].point, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
    assert_eq!(m[0].version, Version::V1);
    assert!(m[0].options.contains(&"cpu".to_string()));
    assert_eq!(m[3].version, Version::V2);
}

#[test]
fn parses_own_cgroups() {
    let (v2, v1) = parse_self_cgroup("4:memory:/a/b\n2:cpu,cpuacct:/\n0::/svc.slice\n");
    assert_eq!(v2.as_deref(), Some("/svc.slice"));
    assert_eq!(v1["memory"], "/a/b");
    assert_eq!(v1["cpuacct"], "/");
}

#[test]
fn instance_ids_differ_by_socket_and_are_stable() {
    let a = instance_id(Path::new("/run/orchestrator.sock"));
    assert_eq!(a, instance_id(Path::new("/run/orchestrator.sock")));
    assert_ne!(a, instance_id(Path::new("/tmp/other.sock")));
    assert!(a.starts_with("orchestrator-") && a.len() == 29);
}

#[test]
fn paths_join_own_cgroup() {
    assert_eq!(
        join_cgroup_path(Path::new("/sys/fs/cgroup/memory"), "/a/b"),
        PathBuf::from("/sys/fs/cgroup/memory/a/b")
    );
    assert_eq!(
        join_cgroup_path(Path::new("/sys/fs/cgroup"), "/"),
        PathBuf::from("/sys/fs/cgroup/")
    );
}

#[test]
fn creates_tracking_cgroups_ahead() {
    let base = std::env::temp_dir().join(format!("orch-cg-ahead-{}", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let cg = Cgroups {
        tracker: Some(Hierarchy {
            version: Version::V2,
            base: base.clone(),
        }),
        ..Cgroups::default()
    };
    // One service is not worth a thread.
    assert!(cg.create_ahead(vec!["one".into()]).is_none());
    let names: Vec<String> = (0..5).map(|i| format!("s{i}")).collect();
    cg.create_ahead(names.clone()).unwrap().join().unwrap();
    for n in &names {
        assert!(base.join(n).is_dir(), "{n} was not created");
    }
    assert!(!base.join("one").exists());
    let _ = std::fs::remove_dir_all(&base);
}
