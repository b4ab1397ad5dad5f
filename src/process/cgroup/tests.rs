//! Unit tests of `cgroup`.

use super::detect::*;
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

#[test]
fn only_the_tracking_hierarchy_s_own_path_names_a_service() {
    let v2 = ProcKey {
        controller: None,
        base: "/system.slice/orch.service/orchestrator-ab".into(),
    };
    let on = |path: &str| format!("12:pids:/\n1:name=systemd:/\n0::{path}\n");
    let ours = "/system.slice/orch.service/orchestrator-ab";
    assert_eq!(v2.owner(&on(&format!("{ours}/web"))), Some("web"));
    assert_eq!(v2.owner(&on(&format!("{ours}/web/sub"))), Some("web"));
    // The same names under a user's delegated cgroup, or with a longer id.
    let user = "/user.slice/user-1000.slice/user@1000.service/orchestrator-ab/web";
    assert_eq!(v2.owner(&on(user)), None);
    assert_eq!(v2.owner(&on(&format!("{ours}x/web"))), None);
    assert_eq!(v2.owner(&on(ours)), None);
    assert_eq!(v2.owner(&on(&format!("{ours}/"))), None);
    // The right path on another hierarchy means nothing.
    let elsewhere = format!("4:memory:{ours}/web\n1:name=systemd:{ours}/web\n0::/\n");
    assert_eq!(v2.owner(&elsewhere), None);
    // A v1 tracker reads its own controller's line, co-mounted or not.
    let v1 = ProcKey {
        controller: Some("pids".into()),
        base: "/orchestrator-ab".into(),
    };
    assert_eq!(v1.owner("5:pids:/orchestrator-ab/db\n0::/\n"), Some("db"));
    assert_eq!(v1.owner("5:cpu,pids:/orchestrator-ab/db\n"), Some("db"));
    assert_eq!(
        v1.owner("5:pids:/\n4:memory:/orchestrator-ab/db\n0::/orchestrator-ab/db\n"),
        None
    );
}
