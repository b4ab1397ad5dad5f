use super::*;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn wait(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn messages_of_a_registered_group_are_coalesced_and_wake_once() {
    let dir = std::env::temp_dir().join(format!("notify-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.sock");
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = Notify::open(&path, None, move |s| {
        let _ = tx.send(s);
    })
    .unwrap();
    let client = UnixDatagram::unbound().unwrap();
    // Not registered yet: rejected.
    client.send_to(b"READY=1", &path).unwrap();
    assert!(wait(|| n.rejected() == 1));
    // SAFETY: getpgrp has no preconditions.
    let pgid = unsafe { libc::getpgrp() };
    let svc: Arc<str> = "svc".into();
    n.register(pgid, &svc);
    for _ in 0..1000 {
        client.send_to(b"WATCHDOG=1", &path).unwrap();
    }
    client
        .send_to(b"READY=1\nSTATUS=warming up", &path)
        .unwrap();
    client.send_to(b"STATUS=up", &path).unwrap();
    client.send_to(&[b'x'; MAX_DATAGRAM + 1], &path).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), svc);
    assert!(wait(|| n.dropped("svc") == 1));
    // One wake for all of it; keep-alives woke nobody.
    assert!(rx.try_recv().is_err());
    let slot = n.take("svc").unwrap();
    assert!(slot.ready && slot.keepalive.is_some());
    assert_eq!(slot.status.as_deref(), Some("up"));
    client.send_to(b"WATCHDOG=trigger", &path).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), svc);
    assert!(n.take("svc").unwrap().trigger);
    assert!(!n.take("svc").unwrap().trigger, "consumed");
    drop(n);
    assert!(!path.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_main_process_heard_before_its_registration_is_heard_after_it() {
    use std::io::BufRead;
    let dir = std::env::temp_dir().join(format!("notify-early-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.sock");
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = Notify::open(&path, None, move |s| {
        let _ = tx.send(s);
    })
    .unwrap();
    // Our child, leading its own group, as a freshly spawned service is.
    let script = format!(
        "import os, socket, time\nos.setsid()\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\ns.sendto(b'READY=1', {:?})\nprint('sent', flush=True)\ntime.sleep(10)",
        path.display().to_string()
    );
    let Ok(mut child) = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: python3 is not installed");
        return;
    };
    let mut line = String::new();
    let out = child.stdout.take().unwrap();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert!(wait(|| n.shared.early.lock().unwrap().len() == 1));
    assert_eq!(n.rejected(), 0);
    let svc: Arc<str> = "svc".into();
    n.register(child.id() as i32, &svc);
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), svc);
    assert!(n.take("svc").unwrap().ready);
    n.forget(child.id() as i32);
    assert!(!n.take("svc").unwrap().ready, "the next run starts afresh");
    let _ = child.kill();
    let _ = child.wait();
    drop(n);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A flood from processes of no service costs one look at /proc per sender, not
/// one per datagram, and a registered group is heard in the middle of it.
#[test]
fn a_refused_sender_is_not_looked_up_again_for_every_datagram() {
    let dir = std::env::temp_dir().join(format!("notify-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("n.sock");
    let (tx, rx) = crossbeam_channel::unbounded();
    let n = Notify::open(&path, None, move |s| {
        let _ = tx.send(s);
    })
    .unwrap();
    let client = UnixDatagram::unbound().unwrap();
    for _ in 0..500 {
        client.send_to(b"WATCHDOG=1", &path).unwrap();
    }
    assert!(wait(|| n.rejected() == 500));
    assert_eq!(n.shared.proc_reads.load(Ordering::Relaxed), 1);
    // The same process, once its group is a service's, is heard at once.
    // SAFETY: getpgrp has no preconditions.
    let svc: Arc<str> = "svc".into();
    n.register(unsafe { libc::getpgrp() }, &svc);
    client.send_to(b"READY=1", &path).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), svc);
    assert_eq!(n.shared.proc_reads.load(Ordering::Relaxed), 1);
    drop(n);
    let _ = std::fs::remove_dir_all(&dir);
}
