//! One orchestrator per control socket (SPEC 5): a lock file beside the socket decides
//! who owns it, so a stale socket or pidfile left by a crash is recognised for what it is
//! (nobody holds the lock) and replaced, and a live daemon is never displaced. Also the
//! start-up chores that belong with it: the pidfile, `--daemon`, and systemd readiness.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

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

/// The socket path when neither flag, environment nor config names one (SPEC 2).
pub fn default_socket() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/orchestrator.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("orchestrator.sock"),
        None => PathBuf::from(format!("/tmp/orchestrator-{uid}.sock")),
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Opens `path` and takes an exclusive lock on it without waiting. `Ok(None)` when
/// somebody else holds it (their pid, if the file says it, comes back in the error).
fn try_lock(path: &Path) -> io::Result<Result<File, Option<i32>>> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
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
        if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(|e| io_err("cannot create", dir, e))?;
        }
        let lock_file = lock_path(socket);
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
        // Bind with a restrictive umask so the socket never exists with wider access.
        // SAFETY: umask has no preconditions.
        let old = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(socket);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(|e| io_err("cannot bind", socket, e))?;
        let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600));
        let mut inst = Instance {
            lock,
            socket: socket.to_path_buf(),
            pidfile,
        };
        inst.record_pid();
        Ok((inst, listener))
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

/// Detaches from the terminal and the caller's session (double fork). Must run before
/// any thread is started. The caller's process exits 0 once the daemon exists.
pub fn daemonize(log: File) -> io::Result<()> {
    // SAFETY: no other thread exists yet (checked by the caller's order), so fork is safe.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => std::process::exit(0),
    }
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
        libc::dup2(log.as_raw_fd(), 2);
    }
    let _ = std::env::set_current_dir("/");
    Ok(())
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
