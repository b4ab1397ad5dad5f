//! A service's listening sockets (docs/sockets-and-upgrades.md): binding what a `sockets`
//! entry names (parsed by `config::sockets`) once on the orchestrator's side, and the
//! descriptors and `LISTEN_FDNAMES` handed to every run.
//!
//! Every descriptor here is close-on-exec: only the spawn of that service's own runs
//! puts them at fd 3 and up (and clears the flag there, with `LISTEN_PID` written by
//! the child: `ChildPart::apply`, held to the child's rules), so no other service,
//! health check or helper ever inherits one. This module never spawns, and never closes a
//! socket while its service still exists: the supervisor's entry owns the `Bound`, and
//! dropping it (service removed, sockets changed) is what closes them and removes a
//! Unix socket's file.

use crate::common::safe_fs;
use crate::config::sockets::{parse, parse_mode, Address};
use crate::config::SocketConfig;
use std::ffi::CString;
use std::io;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The descriptors a run gets, in order (fd 3, 4, ...), and their `LISTEN_FDNAMES`.
#[derive(Debug, Clone, Default)]
pub struct Passed {
    pub fds: Vec<RawFd>,
    pub names: String,
}

impl Passed {
    /// What passing these adds to one spawn, prepared before the clone; `None` without
    /// sockets.
    pub fn prepare(&self) -> io::Result<Option<Prepared>> {
        if self.fds.is_empty() {
            return Ok(None);
        }
        let n = self.fds.len() as RawFd;
        let mut copies = Vec::with_capacity(self.fds.len());
        for &fd in &self.fds {
            // SAFETY: F_DUPFD_CLOEXEC on a descriptor the supervisor keeps open.
            let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3 + n) };
            if copy < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor, ours alone.
            copies.push(unsafe { OwnedFd::from_raw_fd(copy) });
        }
        let cstr =
            |s: String| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
        let mut slot = LISTEN_PID.as_bytes().to_vec();
        slot.resize(LISTEN_PID.len() + 24, 0);
        // The heap buffer stays where it is however the Vec moves; both pointers into
        // it come from this one.
        let base = slot.as_mut_ptr();
        Ok(Some(Prepared {
            env: [
                cstr(format!("LISTEN_FDS={n}"))?,
                cstr(format!("LISTEN_FDNAMES={}", self.names))?,
            ],
            raw: copies.iter().map(|f| f.as_raw_fd()).collect(),
            _copies: copies,
            _slot: slot,
            base,
        }))
    }
}

const LISTEN_PID: &str = "LISTEN_PID=";

/// What passing sockets adds to a spawn.
pub struct Prepared {
    /// `LISTEN_FDS=n` and `LISTEN_FDNAMES=...`.
    pub env: [CString; 2],
    /// Copies of the sockets, all numbered above the targets 3..3+n (so that no dup2
    /// in the child overwrites a source), close-on-exec; closed after the spawn.
    _copies: Vec<OwnedFd>,
    raw: Vec<RawFd>,
    /// `LISTEN_PID=` and room for the child to write its pid and a NUL: it cannot
    /// allocate, and only it knows its pid.
    _slot: Vec<u8>,
    base: *mut u8,
}

impl Prepared {
    /// The `LISTEN_PID=...` entry for the environment block.
    pub fn pid_entry(&self) -> *const libc::c_char {
        self.base as *const libc::c_char
    }

    /// What the child needs, valid while this lives.
    pub fn child_part(&mut self) -> ChildPart {
        ChildPart {
            fds: self.raw.as_ptr(),
            n: self.raw.len(),
            // SAFETY: inside the slot, which has room for the prefix, 20 digits, a NUL.
            digits: unsafe { self.base.add(LISTEN_PID.len()) },
        }
    }
}

/// The child's side of passing sockets: raw pointers into a `Prepared` that outlives
/// the child's use of them (the parent waits, CLONE_VFORK, until it execs).
#[derive(Clone, Copy)]
pub struct ChildPart {
    fds: *const RawFd,
    n: usize,
    digits: *mut u8,
}

impl ChildPart {
    pub const NONE: ChildPart = ChildPart {
        fds: std::ptr::null(),
        n: 0,
        digits: std::ptr::null_mut(),
    };

    /// In the child, after every descriptor was marked close-on-exec: the sockets at 3,
    /// 4, ... (dup2 leaves the copy without close-on-exec), then the child's pid after
    /// `LISTEN_PID=`, in decimal, written by hand. Raw calls only, no allocation, as
    /// the rest of the child's set-up.
    ///
    /// # Safety
    /// Only in the spawned child, with the `Prepared` this came from alive.
    pub unsafe fn apply(&self) -> bool {
        for i in 0..self.n {
            if libc::dup2(*self.fds.add(i), 3 + i as libc::c_int) < 0 {
                return false;
            }
        }
        if self.digits.is_null() {
            return true;
        }
        // The raw call: a libc wrapper could answer from a cache of the parent's pid.
        let pid = libc::syscall(libc::SYS_getpid) as u32;
        crate::process::spawn::write_pid(self.digits, pid);
        true
    }
}

/// A service's sockets, bound. Dropping it closes them and removes the Unix sockets'
/// files (those still the ones bound here).
#[derive(Debug)]
pub struct Bound {
    configs: Vec<SocketConfig>,
    fds: Vec<OwnedFd>,
    names: String,
    /// Unix socket files with their (device, inode), to remove on drop.
    files: Vec<(PathBuf, u64, u64)>,
}

impl Bound {
    /// Binds every entry of `configs` (all or nothing). Unnamed sockets are named after
    /// the service, as systemd names them after their unit. The error names the
    /// socket and the OS error, for `last_error`.
    pub fn bind(service: &str, configs: &[SocketConfig]) -> Result<Bound, String> {
        let mut bound = Bound {
            configs: configs.to_vec(),
            fds: Vec::new(),
            names: String::new(),
            files: Vec::new(),
        };
        for (i, s) in configs.iter().enumerate() {
            let fd = bound
                .bind_one(s)
                .map_err(|e| format!("cannot bind socket {}: {e}", s.listen))?;
            bound.fds.push(fd);
            if i > 0 {
                bound.names.push(':');
            }
            bound.names.push_str(s.name.as_deref().unwrap_or(service));
        }
        Ok(bound)
    }

    /// True when these are the sockets `configs` asks for.
    pub fn matches(&self, configs: &[SocketConfig]) -> bool {
        self.configs == configs
    }

    /// The descriptors, for `upgrade-self` (which leaves them open across its exec).
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.fds.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// The sockets a previous image bound, taken over (`upgrade-self`): `fds` in the
    /// order of `configs`. `None` if their number does not match or one is not open.
    pub fn adopt(service: &str, configs: &[SocketConfig], fds: &[RawFd]) -> Option<Bound> {
        if fds.len() != configs.len() {
            return None;
        }
        let mut bound = Bound {
            configs: configs.to_vec(),
            fds: Vec::new(),
            names: String::new(),
            files: Vec::new(),
        };
        for (i, (s, &fd)) in configs.iter().zip(fds).enumerate() {
            bound.fds.push(crate::process::inherit::adopt(fd)?);
            if i > 0 {
                bound.names.push(':');
            }
            bound.names.push_str(s.name.as_deref().unwrap_or(service));
            if let Ok(Address::Unix(path)) = parse(&s.listen) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    bound.files.push((path, m.dev(), m.ino()));
                }
            }
        }
        Some(bound)
    }

    pub fn passed(&self) -> Passed {
        Passed {
            fds: self.fds.iter().map(|f| f.as_raw_fd()).collect(),
            names: self.names.clone(),
        }
    }

    fn bind_one(&mut self, s: &SocketConfig) -> io::Result<OwnedFd> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        // std's sockets are close-on-exec, and TCP ones have SO_REUSEADDR, so that a new
        // orchestrator can bind again at once after the last one ended.
        let fd = match parse(&s.listen).map_err(invalid)? {
            Address::Tcp(addr) => OwnedFd::from(TcpListener::bind(addr)?),
            Address::Udp(addr) => return Ok(OwnedFd::from(UdpSocket::bind(addr)?)),
            Address::Unix(path) => {
                let mode = s
                    .mode
                    .as_deref()
                    .map(parse_mode)
                    .transpose()
                    .map_err(invalid)?;
                safe_fs::socket_dir(&path)?;
                remove_stale(&path)?;
                // Born with its mode (systemd's default SocketMode, 0666): never
                // chmodded by path, which a symlink renamed over it could redirect.
                let fd = safe_fs::unix_socket(libc::SOCK_STREAM)?;
                safe_fs::bind_unix(fd.as_raw_fd(), &path, mode.unwrap_or(0o666) & 0o777)?;
                let m = std::fs::symlink_metadata(&path)?;
                self.files.push((path, m.dev(), m.ino()));
                fd
            }
        };
        // The largest backlog the kernel allows (std asks for 128): while the service
        // restarts, clients wait in it instead of being refused.
        // SAFETY: listen on a descriptor we own (for TCP, already listening: this only
        // changes the backlog).
        if unsafe { libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        for (path, dev, ino) in &self.files {
            let ours =
                std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// A socket file left at `path` (by an orchestrator that was killed) is removed; any
/// other kind of file there is an error, never removed.
fn remove_stale(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        )),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(listen: &str) -> SocketConfig {
        SocketConfig {
            listen: listen.into(),
            name: None,
            mode: None,
        }
    }

    #[test]
    fn binds_close_on_exec_and_removes_its_file() {
        let dir = std::env::temp_dir().join(format!("orch-sockets-{}", std::process::id()));
        let path = dir.join("s.sock");
        let mut u = cfg(&format!("unix:{}", path.display()));
        u.mode = Some("0600".into());
        u.name = Some("ctl".into());
        let configs = [cfg("127.0.0.1:0"), u, cfg("udp:127.0.0.1:0")];
        let b = Bound::bind("svc", &configs).unwrap();
        let p = b.passed();
        assert_eq!(p.names, "svc:ctl:svc");
        assert_eq!(p.fds.len(), 3);
        for fd in &p.fds {
            // SAFETY: F_GETFD on our own descriptor.
            let flags = unsafe { libc::fcntl(*fd, libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert!(b.matches(&configs));
        // A second bind of the same path replaces the stale socket file.
        drop(b);
        assert!(!path.exists());
        std::fs::write(&path, b"not a socket").unwrap();
        let err = Bound::bind("svc", &configs[1..2]).unwrap_err();
        assert!(err.contains("not a socket"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
