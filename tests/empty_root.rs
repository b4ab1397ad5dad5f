//! PID 1 in an empty namespace (docs/unattended.md): the statically linked build, chrooted
//! into a root that holds only itself, its config, /proc, /etc/passwd and /etc/group (and
//! an nsswitch.conf that would make NSS fail), and
//! BusyBox's static build from Debian (`busybox-static`), as PID 1 of new PID and mount
//! namespaces. Services start (one as a user of /etc/passwd: no NSS), a hundred
//! double-forked orphans leave no zombie, SIGTERM and SIGPWR shut everything down with
//! exit 0, and the namespace ends with nothing left. Root only.

use crate::util::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The static build, made by `make test` beforehand (or here, once, when missing or
/// stale: a no-op when cargo finds it fresh). Its own target directory, so that this
/// build never waits on the lock of the one running the tests.
fn static_binary() -> Result<PathBuf, String> {
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .map_err(|e| format!("rustc -vV: {e}"))?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .ok_or("rustc -vV names no host")?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = manifest.join("target/static");
    let started = Instant::now();
    let out = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--target", &host])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(manifest)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "static build failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("static build checked in {:?}", started.elapsed());
    Ok(target_dir.join(&host).join("debug/orchestrator"))
}

/// Debian's statically linked BusyBox; None (the test skipped, with the reason) where it
/// is not installed. The dynamically linked busybox would not run in the empty root.
fn busybox_static() -> Option<PathBuf> {
    let installed = Command::new("dpkg")
        .args(["-s", "busybox-static"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        crate::util::packages::missing("busybox-static is not installed");
        return None;
    }
    crate::util::packages::find("busybox-static", "/bin/busybox")
}

/// The root: nothing but the binaries, the config and the account files, every
/// directory root-owned 0755 (the daemon's strict modes check them). With `orphans`, a
/// service that makes them, and /dev/null, which BusyBox's shell needs to start a job
/// in the background (the orchestrator itself does without).
fn make_root(sb: &Sandbox, orchestrator: &Path, busybox: &Path, orphans: bool) -> PathBuf {
    let root = sb.path("root");
    for d in ["", "bin", "etc", "proc", "services"] {
        let dir = root.join(d);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy_executable(orchestrator, root.join("orchestrator"));
    copy_executable(busybox, root.join("bin/busybox"));
    for applet in ["sh", "sleep", "id"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nsvc:x:1000:1000:service:/home/svc:/bin/sh\n",
    )
    .unwrap();
    // A tripwire: NSS, were it asked, would find no source for users and groups and
    // report `svc` unknown. The static build must read the two files itself.
    std::fs::write(
        root.join("etc/nsswitch.conf"),
        "passwd: nosuchsource\ngroup: nosuchsource\n",
    )
    .unwrap();
    std::fs::write(
        root.join("etc/group"),
        "root:x:0:\nsvc:x:1000:\nextra:x:2000:root,svc\n",
    )
    .unwrap();
    // BusyBox by its own name, the applet as the first argument; inside the shell,
    // applets are found in /bin as links.
    let sh = |script: &str| json!({"binary_path": "/bin/busybox", "pass_service_args": false, "args": ["sh", "-c", script]});
    let mut who = sh("echo ids $(id -u) $(id -g) $(id -G); exec sleep 1000");
    who["user"] = json!("svc");
    let mut services = json!({
        "web": sh("echo web up; exec sleep 1000"),
        "who": who,
    });
    if orphans {
        // A hundred double forks: each subshell exits at once, its sleep is orphaned.
        // (`exec`: BusyBox's shell would otherwise run the applet without exec, under
        // the shell's command line.)
        services["forker"] = sh("i=0; while [ $i -lt 100 ]; do (exec sleep 999 &); i=$((i+1)); done; echo forked; exec sleep 1000");
        std::fs::create_dir(root.join("dev")).unwrap();
        let null =
            std::ffi::CString::new(root.join("dev/null").as_os_str().as_encoded_bytes()).unwrap();
        let dev = libc::makedev(1, 3);
        assert_eq!(
            unsafe { libc::mknod(null.as_ptr(), libc::S_IFCHR | 0o666, dev) },
            0,
            "mknod"
        );
    }
    let config = json!({
        "orchestrator": {"control_socket": "/ctl.sock", "services_dir": "/services",
                         "shutdown_timeout_ms": 10000},
        "services": services,
    });
    std::fs::write(root.join("orchestrator.json"), config.to_string()).unwrap();
    root
}

/// `unshare` running the orchestrator as PID 1 of new PID and mount namespaces, chrooted
/// into `root`; its stderr collected. Dropping it kills everything (`--kill-child`
/// takes the namespace's PID 1, and with it every process in the namespace).
struct Namespace {
    unshare: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The orchestrator's pid on the host.
    pid: i64,
    /// The namespace, as /proc/PID/ns/pid reads.
    ns: String,
}

impl Namespace {
    fn start(root: &Path) -> Namespace {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--mount", "--fork", "--kill-child"])
            .arg(format!("--mount-proc={}", root.join("proc").display()))
            .arg("chroot")
            .arg(root)
            .args(["/orchestrator", "run", "--config", "/orchestrator.json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", "/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut unshare = cmd.spawn().expect("spawn unshare");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = unshare.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let mut ns = Namespace {
            pid: 0,
            ns: String::new(),
            unshare,
            log,
        };
        let parent = ns.unshare.id() as i64;
        let found = wait_until(DEADLINE, || {
            ns.pid = processes()
                .into_iter()
                .find(|p| p.ppid == parent && p.cmdline.starts_with("/orchestrator run"))
                .map_or(0, |p| p.pid);
            ns.pid != 0
        });
        assert!(found, "the orchestrator never ran; log:\n{}", ns.log_text());
        ns.ns = ns_of(ns.pid).expect("the namespace of the orchestrator");
        ns
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn wait_log(&self, part: &str) {
        let ok = wait_until(DEADLINE, || {
            self.log.lock().unwrap().iter().any(|l| l.contains(part))
        });
        assert!(ok, "no log line with {part:?}; log:\n{}", self.log_text());
    }

    /// Every process in the namespace.
    fn members(&self) -> Vec<Proc> {
        processes()
            .into_iter()
            .filter(|p| ns_of(p.pid).as_deref() == Some(self.ns.as_str()))
            .collect()
    }

    /// Signals the namespace's PID 1; waits for unshare, which exits with its status.
    fn stop_with(&mut self, sig: i32) -> Option<i32> {
        unsafe { libc::kill(self.pid as i32, sig) };
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.unshare.try_wait() {
                return st.code();
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Never 0 or 1: kill(0) would take the test runner's own group.
        if self.pid > 1 {
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        }
        unsafe { libc::killpg(self.unshare.id() as i32, libc::SIGKILL) };
        let _ = self.unshare.wait();
    }
}

struct Proc {
    pid: i64,
    ppid: i64,
    state: String,
    cmdline: String,
}

fn processes() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter_map(|pid| {
            let f = proc_stat(pid)?;
            Some(Proc {
                pid,
                ppid: f[3].parse().ok()?,
                state: f[2].clone(),
                cmdline: cmdline(pid),
            })
        })
        .collect()
}

fn ns_of(pid: i64) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|p| p.display().to_string())
}

/// The control socket from the host: the chroot's /ctl.sock is root/ctl.sock here.
fn status(root: &Path) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg(root.join("ctl.sock"))
        .args(["status", "--json"]);
    let out = run_with_timeout(cmd, DEADLINE);
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn all_running(root: &Path, count: usize) -> bool {
    let st = status(root);
    st.len() == count && st.iter().all(|s| s["state"] == "running")
}

fn setup(orphans: bool) -> Option<(Sandbox, PathBuf)> {
    if !crate::util::is_root() {
        eprintln!("skipped: PID and mount namespaces and chroot need root");
        return None;
    }
    let busybox = busybox_static()?;
    let bin = static_binary().unwrap_or_else(|e| panic!("{e}"));
    let sb = Sandbox::new();
    let root = make_root(&sb, &bin, &busybox, orphans);
    Some((sb, root))
}

/// The namespace is gone: no process in it, and its /proc mount never reached the host.
fn assert_nothing_left(ns: &Namespace, root: &Path) {
    assert!(
        wait_until(DEADLINE, || ns.members().is_empty()),
        "left in the namespace: {:?}",
        ns.members().iter().map(|p| &p.cmdline).collect::<Vec<_>>()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&root.display().to_string()),
        "a mount of the namespace is visible on the host"
    );
}

#[test]
fn as_pid_1_in_an_empty_root_reaps_orphans_and_sigterm_shuts_down() {
    let Some((_sb, root)) = setup(true) else {
        return;
    };
    let mut ns = Namespace::start(&root);
    let st = std::fs::read_to_string(format!("/proc/{}/status", ns.pid)).unwrap();
    let nspid = st.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "not PID 1: {nspid}");

    // Services start; the one with a user got it, and its groups, from /etc files.
    assert!(
        wait_until(DEADLINE, || all_running(&root, 3)),
        "services never all ran: {:?}\n{}",
        status(&root),
        ns.log_text()
    );
    ns.wait_log("web up");
    ns.wait_log("ids 1000 1000 1000 2000");

    // The orphans are PID 1's; killed, each is reaped: no zombie stays.
    ns.wait_log("forked");
    let orphans = || -> Vec<Proc> {
        ns.members()
            .into_iter()
            .filter(|p| p.ppid == ns.pid && p.cmdline.trim_end() == "sleep 999")
            .collect()
    };
    assert!(
        wait_until(DEADLINE, || orphans().len() == 100),
        "{} orphans adopted by PID 1",
        orphans().len()
    );
    for p in orphans() {
        unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
    }
    let zombies = || ns.members().into_iter().filter(|p| p.state == "Z").count();
    assert!(
        wait_until(DEADLINE, || orphans().is_empty() && zombies() == 0),
        "{} zombies, {} orphans left",
        zombies(),
        orphans().len()
    );
    assert!(
        all_running(&root, 3),
        "a service was disturbed: {:?}",
        status(&root)
    );

    assert_eq!(ns.stop_with(libc::SIGTERM), Some(0), "{}", ns.log_text());
    assert!(ns.log_text().contains("SIGTERM received"));
    assert_nothing_left(&ns, &root);
}

#[test]
fn as_pid_1_in_an_empty_root_sigpwr_shuts_down_cleanly() {
    // Not even /dev/null: services get an empty pipe as stdin instead.
    let Some((_sb, root)) = setup(false) else {
        return;
    };
    let mut ns = Namespace::start(&root);
    assert!(
        wait_until(DEADLINE, || all_running(&root, 2)),
        "services never all ran: {}",
        ns.log_text()
    );
    ns.wait_log("web up");
    ns.wait_log("ids 1000 1000 1000 2000");
    assert_eq!(ns.stop_with(libc::SIGPWR), Some(0), "{}", ns.log_text());
    assert!(
        ns.log_text().contains("SIGPWR received"),
        "{}",
        ns.log_text()
    );
    assert_nothing_left(&ns, &root);
}
