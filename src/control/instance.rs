//! One orchestrator per control socket (docs/lifecycle.md): a lock file beside the socket
//! decides who owns it, so a stale socket or pidfile left by a crash is recognised for
//! what it is (nobody holds the lock) and replaced, and a live daemon is never displaced.
//! Also the start-up chores that belong with it: the pidfile, `--daemon`, and systemd
//! readiness.

use crate::common::decode::{self, field, Decode};
use crate::common::safe_fs;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The descriptors of an instance that `upgrade-self` leaves open across its exec (the
/// lock, the pidfile, the control socket's listener), and what the new image needs to
/// take them back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceFds {
    pub lock: RawFd,
    pub pidfile: Option<(PathBuf, RawFd)>,
    pub listener: RawFd,
    pub socket: PathBuf,
    /// The argv a successor is started with (see `daemon::successor_argv`).
    pub argv: Vec<std::ffi::OsString>,
}

impl Decode for InstanceFds {
    fn decode(v: &Value) -> decode::Result<Self> {
        Ok(InstanceFds {
            lock: field(v, "lock")?,
            pidfile: field(v, "pidfile")?,
            listener: field(v, "listener")?,
            socket: field(v, "socket")?,
            argv: field(v, "argv")?,
        })
    }
}

pub enum InstanceError {
    /// Another live orchestrator holds the lock (exit 1).
    AlreadyRunning(Option<i32>),
    /// Anything else that stops us from owning the socket (exit 1).
    Io(String),
}

/// What this instance holds for its lifetime.
pub struct Instance {
    lock: File,
    pub socket: PathBuf,
    pidfile: Option<(PathBuf, File)>,
}

/// Where the lock for `socket` lives. Beside the socket (`SOCKET.lock`) when the
/// socket's directory is ours (owned by root or us, not writable by group or others).
/// In a shared directory such as /tmp (the default socket of a user without
/// `XDG_RUNTIME_DIR`), anyone could create `SOCKET.lock` first and keep us from ever
/// starting, and the sticky bit would stop us from removing it: there the lock goes to
/// a private directory of ours instead, `~/.orchestrator/` (0700, checked), named after
/// the socket's path. Two daemons for one socket still meet on the same lock.
fn lock_path(socket: &Path) -> io::Result<PathBuf> {
    let mut beside = socket.as_os_str().to_owned();
    beside.push(".lock");
    let dir = match socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => std::env::current_dir()?,
    };
    let shared = std::fs::metadata(&dir).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt;
        let me = nix::unistd::geteuid().as_raw();
        (m.uid() != 0 && m.uid() != me) || m.mode() & 0o022 != 0
    });
    if !shared {
        return Ok(PathBuf::from(beside));
    }
    let home = home_dir().ok_or_else(|| {
        io::Error::other(format!(
            "{} is shared with other users and no home directory is known for a private lock; set control_socket (or XDG_RUNTIME_DIR)",
            dir.display()
        ))
    })?;
    let private = home.join(".orchestrator");
    let d = safe_fs::Dir::create(&private, 0o700)?;
    if let Some(u) = d.untrusted() {
        return Err(io::Error::other(format!("lock directory {u}")));
    }
    let name: String = socket
        .to_string_lossy()
        .chars()
        .map(|c| if c == '/' { '_' } else { c })
        .collect();
    Ok(private.join(format!("{name}.lock")))
}

/// Our home directory from the password database (not `$HOME`, which the caller sets).
fn home_dir() -> Option<PathBuf> {
    let uid = nix::unistd::geteuid();
    crate::config::accounts::user(&uid.to_string())
        .ok()
        .flatten()
        .map(|u| u.home)
        .filter(|d| d.is_absolute() && d != Path::new("/"))
}

/// Opens `path` and takes an exclusive lock on it without waiting. `Ok(None)` when
/// somebody else holds it (their pid, if the file says it, comes back in the error).
/// Never through a symlink, never a FIFO or a hard link (`safe_fs::open_lock`): the
/// pid is written into the file, and that must not truncate whatever a link points to.
fn try_lock(path: &Path) -> io::Result<Result<File, Option<i32>>> {
    let mut f = safe_fs::open_lock(path, 0o600)?;
    // SAFETY: f is an open descriptor for the duration of the call.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Ok(f));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(err);
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    Ok(Err(text.trim().parse().ok()))
}

fn write_pid(f: &mut File, pid: u32) -> io::Result<()> {
    f.set_len(0)?;
    f.rewind()?;
    writeln!(f, "{pid}")?;
    f.flush()
}

impl Instance {
    /// Takes the lock for `socket` (and `pidfile`), replaces a stale socket and binds it
    /// with mode 0600.
    pub fn acquire(
        socket: &Path,
        pidfile: Option<&Path>,
    ) -> Result<(Instance, UnixListener), InstanceError> {
        let io_err = |what: &str, p: &Path, e: io::Error| {
            InstanceError::Io(format!("{what} {}: {e}", p.display()))
        };
        safe_fs::socket_dir(socket).map_err(|e| io_err("cannot use the socket", socket, e))?;
        let lock_file =
            lock_path(socket).map_err(|e| io_err("cannot place the lock for", socket, e))?;
        let lock = match try_lock(&lock_file).map_err(|e| io_err("cannot lock", &lock_file, e))? {
            Ok(f) => f,
            Err(pid) => return Err(InstanceError::AlreadyRunning(pid)),
        };
        let pidfile = match pidfile {
            Some(p) => match try_lock(p).map_err(|e| io_err("cannot lock pidfile", p, e))? {
                Ok(f) => Some((p.to_path_buf(), f)),
                Err(pid) => return Err(InstanceError::AlreadyRunning(pid)),
            },
            None => None,
        };
        // We hold the lock, so whatever socket file exists is a crashed predecessor's.
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove stale socket", socket, e)),
        }
        // Born 0600: never wider for a moment, and never chmodded by path afterwards.
        let listener = safe_fs::unix_socket(libc::SOCK_STREAM)
            .and_then(|fd| {
                safe_fs::bind_unix(fd.as_raw_fd(), socket, 0o600)?;
                // SAFETY: listen on a descriptor we own.
                if unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(UnixListener::from(fd))
            })
            .map_err(|e| io_err("cannot bind", socket, e))?;
        let mut inst = Instance {
            lock,
            socket: socket.to_path_buf(),
            pidfile,
        };
        inst.record_pid();
        Ok((inst, listener))
    }

    /// The lock, the pidfile and the listener a previous image of this process held
    /// (`upgrade-self`), taken over: the lock is never let go in between.
    pub fn adopt(
        socket: &Path,
        lock: RawFd,
        pidfile: Option<(PathBuf, RawFd)>,
        listener: RawFd,
    ) -> Result<(Instance, UnixListener), String> {
        let own = |fd: RawFd| -> Result<OwnedFd, String> {
            crate::process::inherit::adopt(fd)
                .ok_or_else(|| format!("descriptor {fd} was not handed over"))
        };
        let inst = Instance {
            lock: File::from(own(lock)?),
            socket: socket.to_path_buf(),
            pidfile: match pidfile {
                Some((p, fd)) => Some((p, File::from(own(fd)?))),
                None => None,
            },
        };
        Ok((inst, UnixListener::from(own(listener)?)))
    }

    /// What `upgrade-self` leaves open across its exec, with `listener`'s descriptor.
    pub fn fds(&self, listener: RawFd) -> InstanceFds {
        InstanceFds {
            lock: self.lock.as_raw_fd(),
            pidfile: self
                .pidfile
                .as_ref()
                .map(|(p, f)| (p.clone(), f.as_raw_fd())),
            listener,
            socket: self.socket.clone(),
            argv: Vec::new(),
        }
    }

    /// Writes our pid into the lock file and the pidfile (again after `--daemon` forks).
    pub fn record_pid(&mut self) {
        let pid = std::process::id();
        let _ = write_pid(&mut self.lock, pid);
        if let Some((_, f)) = &mut self.pidfile {
            let _ = write_pid(f, pid);
        }
    }

    /// Removes the socket and pidfile at a clean exit. The lock file stays: removing a
    /// file others may be about to lock would let two instances run.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.socket);
        if let Some((p, _)) = &self.pidfile {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The daemon's ends of the two pipes back to the process that `run --daemon` was
/// started as, which waits on them (see `daemonize`): descriptor 2 is the first until
/// then, so that a start-up error reaches the caller's stderr as it was written, and
/// the verdict (the caller's exit code, one byte) comes on the second. Whatever bytes
/// the start-up text holds, a NUL included, it cannot pass for the verdict.
pub struct Starting {
    verdict: File,
    /// The daemon's log, for descriptor 2 once the caller is gone.
    log: File,
}

impl Starting {
    /// The daemon serves (socket listening, pidfile holding its pid): the caller exits 0.
    pub fn ready(self) {
        self.finish(0);
    }

    /// Start-up failed after detaching: the caller exits with `code`, having printed
    /// whatever the daemon wrote to stderr meanwhile.
    pub fn failed(self, code: i32) {
        self.finish(u8::try_from(code).unwrap_or(1).max(1));
    }

    fn finish(mut self, code: u8) {
        // The log takes descriptor 2 first, which closes our end of the stderr pipe:
        // everything written there is in the pipe before the verdict is sent, and
        // nothing is written there once the caller has stopped reading it.
        // SAFETY: dup2 of a descriptor we own onto stderr.
        unsafe { libc::dup2(self.log.as_raw_fd(), 2) };
        let _ = self.verdict.write_all(&[code]);
    }
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two descriptors for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just opened both; each is owned once, here.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Detaches from the terminal and the caller's session (double fork). Must run before
/// any thread is started. The process the caller started stays until the daemon says
/// it serves or why it could not (`Starting`), and exits with that: a pidfile read the
/// moment `run --daemon` returns holds the daemon's own pid (systemd's `Type=forking`,
/// start-stop-daemon and OpenRC read it then).
pub fn daemonize(log: &File) -> io::Result<Starting> {
    let (text_read, text_write) = pipe()?;
    let (verdict_read, verdict_write) = pipe()?;
    let log = log.try_clone()?;
    // SAFETY: no other thread exists yet (checked by the caller's order), so fork is safe.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => {
            drop((text_write, verdict_write));
            std::process::exit(relay_until_ready(
                &text_read,
                verdict_read,
                &mut io::stderr(),
            ));
        }
    }
    drop((text_read, verdict_read));
    // SAFETY: setsid has no preconditions; in the child it cannot fail with EPERM.
    unsafe { libc::setsid() };
    // SAFETY: still single-threaded.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => std::process::exit(0),
    }
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    // SAFETY: dup2 onto the standard descriptors with valid open descriptors.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(null.as_raw_fd(), 1);
        libc::dup2(text_write.as_raw_fd(), 2);
    }
    // Descriptor 2 is now the only write end of the text pipe: once `finish` replaces
    // it, the caller sees the end of the text.
    drop(text_write);
    let _ = std::env::set_current_dir("/");
    Ok(Starting {
        verdict: verdict_write,
        log,
    })
}

/// The waiting side: copies what the daemon writes to stderr (`text`), byte for byte,
/// to `out` until the verdict comes on its own pipe (one byte, the exit code); then
/// whatever text is still in the pipe follows, and the code is returned. A daemon that
/// ends without a verdict failed (exit 1).
fn relay_until_ready(text: &File, mut verdict: File, out: &mut impl Write) -> i32 {
    let mut buf = [0u8; 4096];
    // Copies what `text` holds now; false once it has ended (or cannot be read).
    let mut copy = |wait: bool| -> bool {
        loop {
            if !wait {
                let mut pfd = libc::pollfd {
                    fd: text.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, no wait.
                if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
                    return true;
                }
            }
            match (&*text).read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    if wait {
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    };
    let mut text_open = true;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: verdict.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative descriptor is left out: the text has ended.
                fd: if text_open { text.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds, for as long as it takes.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if fds[0].revents != 0 {
            let mut code = [0u8; 1];
            let got = loop {
                match verdict.read(&mut code) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    r => break r,
                }
            };
            // Everything the daemon wrote to stderr came before its verdict.
            if text_open {
                copy(false);
            }
            if let Ok(1) = got {
                let _ = out.flush();
                return i32::from(code[0]);
            }
            break;
        }
        if fds[1].revents != 0 {
            text_open = copy(true);
        }
    }
    let _ = writeln!(out, "orchestrator: the daemon exited before it was ready");
    1
}

/// Tells systemd (Type=notify) that we are ready, when NOTIFY_SOCKET is set.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("NOTIFY_SOCKET: {e}");
            return;
        }
    };
    let bytes = path.as_encoded_bytes();
    let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(msg.as_bytes(), &addr))
    } else {
        sock.send_to(msg.as_bytes(), Path::new(&path))
    };
    if let Err(e) = sent {
        log::warn!("cannot notify systemd at {}: {e}", path.to_string_lossy());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;

    /// What `upgrade-self` hands over, a path and an argument that is not UTF-8 included.
    #[test]
    fn the_carried_descriptors_read_back_as_written() {
        let fds = InstanceFds {
            lock: 3,
            pidfile: Some((PathBuf::from("/run/orchestrator.pid"), 5)),
            listener: 4,
            socket: PathBuf::from("/run/orchestrator.sock"),
            argv: vec![
                "orchestrator".into(),
                std::ffi::OsString::from_vec(vec![0xff, b'x']),
            ],
        };
        let (written, again) = crate::common::decode::round_trip(&fds);
        assert_eq!(written, again);
        let read = InstanceFds::decode(&written).unwrap();
        assert_eq!(read.argv, fds.argv);
        assert_eq!(read.pidfile, fds.pidfile);
    }

    fn tmpdir(tag: &str) -> PathBuf {
        // Not under /tmp: that is the shared case, tested on its own.
        let d = crate::common::safe_fs::trusted_test_base()
            .join(format!("orch-instance-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// Start-up text is relayed as written, a NUL and the bytes after it included, and
    /// only the verdict pipe decides the exit code. (With the verdict in-band, a NUL
    /// followed by 2 in the text made the caller exit 2 and cut the text there.)
    #[test]
    fn start_up_text_with_a_nul_is_relayed_whole() {
        let text = b"cannot use key `k\0\x02`: refused\n\0";
        for code in [0u8, 3] {
            let (text_r, mut text_w) = pipe().unwrap();
            let (verdict_r, mut verdict_w) = pipe().unwrap();
            text_w.write_all(text).unwrap();
            verdict_w.write_all(&[code]).unwrap();
            // The daemon's descriptor 2 may outlive the verdict: no wait for its end.
            let mut out = Vec::new();
            assert_eq!(
                relay_until_ready(&text_r, verdict_r, &mut out),
                i32::from(code)
            );
            assert_eq!(out, text);
            drop(text_w);
        }
    }

    /// A daemon that ends without a verdict failed, whatever its text held.
    #[test]
    fn no_verdict_is_a_failed_start() {
        let (text_r, mut text_w) = pipe().unwrap();
        let (verdict_r, verdict_w) = pipe().unwrap();
        text_w.write_all(b"died\0\0").unwrap();
        drop((text_w, verdict_w));
        let mut out = Vec::new();
        assert_eq!(relay_until_ready(&text_r, verdict_r, &mut out), 1);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "died\0\0orchestrator: the daemon exited before it was ready\n"
        );
    }

    #[test]
    fn lock_and_pidfile_never_truncate_through_a_symlink() {
        let d = tmpdir("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let sock = d.join("s.sock");
        std::os::unix::fs::symlink(&victim, d.join("s.sock.lock")).unwrap();
        let err = Instance::acquire(&sock, None).err().expect("refused");
        assert!(matches!(err, InstanceError::Io(_)));
        std::fs::remove_file(d.join("s.sock.lock")).unwrap();
        let pidfile = d.join("pid");
        std::os::unix::fs::symlink(&victim, &pidfile).unwrap();
        assert!(Instance::acquire(&sock, Some(&pidfile)).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_lock_in_a_shared_directory_goes_to_a_private_one() {
        let d = tmpdir("own");
        assert_eq!(lock_path(&d.join("x.sock")).unwrap(), d.join("x.sock.lock"));
        // /tmp is shared: the lock is not placed where another user could squat it.
        let shared = std::env::temp_dir().join("orchestrator-test-squat.sock");
        match lock_path(&shared) {
            Ok(p) => {
                assert!(!p.starts_with(std::env::temp_dir()), "{}", p.display());
                let dir = p.parent().unwrap();
                let m = std::fs::metadata(dir).unwrap();
                assert_eq!(m.uid(), nix::unistd::geteuid().as_raw());
                assert_eq!(m.mode() & 0o077, 0);
            }
            Err(e) => assert!(e.to_string().contains("no home directory"), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
