//! The file-system rules of a daemon that runs as root, written down once. Every file
//! the daemon opens, creates or deletes on behalf of a configuration it does not fully
//! control (log files, the state file, the lock and the pidfile, binaries it hashes,
//! `data_dir`) goes through here, so that nothing a service or a local user can write
//! makes root act for them.
//!
//! The rules:
//! - **No symlink at the last component** of a file we write or create: `O_NOFOLLOW`.
//!   A file we create fresh is created with `O_EXCL` after an unlink, never truncated
//!   in place.
//! - **Only regular files** are read or written: every open adds `O_NONBLOCK` (so a FIFO
//!   or a device cannot block the open) and checks the type with `fstat` before the first
//!   byte moves; a file we write must also have one link (no hard link to a file
//!   elsewhere).
//! - **Directories are opened once** and what is inside is reached relative to that
//!   descriptor (`openat`, `renameat`, `unlinkat`, `mkdirat`), so nobody can swap a
//!   directory on the way between two operations.
//! - **StrictModes** (sshd's rule), for what decides what root runs (the config file,
//!   service binaries, `upgrade` paths), for the state directory and for the
//!   directories of the Unix sockets the daemon binds: the file and every directory up
//!   to `/` owned by root (or the daemon's user) and not writable by group or others.
//!   One exception: a sticky directory owned by root (or us) may be writable by others
//!   when the entry right below it is owned by root (or us), because the kernel then
//!   lets nobody else rename or remove that entry (`/tmp/x` made by root).
//!
//! - **Unix sockets** are created with their final mode by `bind` itself and never
//!   chmodded by path afterwards (whoever can write to the directory could rename a
//!   symlink over the fresh socket in between); their directory passes StrictModes.
//!
//! This module never decides what to do about a refusal: callers log, fail the service
//! or refuse to start.

use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

/// `openat(dir, path, flags, mode)` with `O_CLOEXEC`, into an owned descriptor.
fn open_at(dir: RawFd, path: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: c is a valid NUL-terminated string; the result is a fresh descriptor we own.
    let fd = cvt(unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC, mode) })?;
    // SAFETY: fd was just returned by openat and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Checks that an opened file is a regular file (and, when `writing`, has one link),
/// then switches it back to blocking mode. The error says what stood there instead.
fn settle_regular(fd: OwnedFd, writing: bool) -> io::Result<(File, Metadata)> {
    let f = File::from(fd);
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(other(format!("not a regular file ({})", kind(&m))));
    }
    if writing && m.nlink() > 1 {
        return Err(other(format!(
            "has {} hard links: refusing to write through them",
            m.nlink()
        )));
    }
    // SAFETY: fcntl on a descriptor we own; plain integer arguments.
    unsafe {
        let flags = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok((f, m))
}

fn kind(m: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
    }
}

/// Opens an existing regular file for reading. `follow`: whether a symlink at the last
/// component may be followed (a binary configured through a link; never for files in a
/// directory others control). A FIFO or a device is refused without blocking.
pub fn open_regular(path: &Path, follow: bool) -> io::Result<(File, Metadata)> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let fd = open_at(
        libc::AT_FDCWD,
        path,
        libc::O_RDONLY | libc::O_NONBLOCK | nofollow,
        0,
    )?;
    settle_regular(fd, false)
}

/// Opens (creating with `mode`) a lock file or a pidfile for reading and writing: never
/// through a symlink, never truncated on open, only a regular file with one link.
pub fn open_lock(path: &Path, mode: u32) -> io::Result<File> {
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    settle_regular(open_at(libc::AT_FDCWD, path, flags, mode)?, true).map(|(f, _)| f)
}

/// The StrictModes rule in one sentence, for refusals.
pub const RULE: &str = "it and every directory above it must be owned by root and not writable by group or others, except a sticky directory such as /tmp right above an entry owned by root";

/// What makes a path untrustworthy under StrictModes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub why: String,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.path.display(), self.why)
    }
}

/// The StrictModes verdict on one inode: owned by root or us, and (unless a symlink,
/// whose mode means nothing) not writable by group or others. `below_ours`: the entry
/// right below this directory on the path is owned by root or us, so a sticky directory
/// of ours may be writable by others. Each refusal says how to fix it.
fn judge(p: &Path, m: &Metadata, below_ours: bool) -> Option<Untrusted> {
    let me = euid();
    let shown = p.display();
    if m.uid() != 0 && m.uid() != me {
        return Some(Untrusted {
            path: p.to_path_buf(),
            why: format!(
                "is owned by uid {} (not root); fix: chown root {shown}",
                m.uid()
            ),
        });
    }
    let mode = m.permissions().mode();
    let sticky = mode & libc::S_ISVTX != 0 && m.file_type().is_dir();
    if !m.file_type().is_symlink() && mode & 0o022 != 0 && !(sticky && below_ours) {
        let who = if mode & 0o002 != 0 {
            "others"
        } else {
            "its group"
        };
        let fix = if sticky {
            // A shared directory such as /tmp itself: the fix is one level down.
            format!("use a directory of root's below {shown} (mkdir {shown}/NAME)")
        } else {
            format!("chmod go-w {shown}")
        };
        return Some(Untrusted {
            path: p.to_path_buf(),
            why: format!(
                "is writable by {who} (mode {:o}); fix: {fix}",
                mode & 0o7777
            ),
        });
    }
    None
}

/// sshd's StrictModes on `path`: the file and every directory up to `/`, both as
/// written (whoever may replace a symlink on the way) and as resolved (what is really
/// read), owned by root or the daemon's user and not writable by group or others, but
/// for the sticky exception (see the module's rules). A relative path is taken from the
/// current directory. `None`: trusted. A path that does not exist is not judged here
/// (the caller reports it as missing).
pub fn untrusted(path: &Path) -> Option<Untrusted> {
    untrusted_with(path, &mut Verdicts::default())
}

/// StrictModes on `dir`, a directory in which the daemon is about to create an entry of
/// its own (a Unix socket): as `untrusted`, except that `dir` itself may be a sticky
/// directory such as /tmp, since the entry below it will be root's (or ours).
pub fn untrusted_home_of_own_entry(dir: &Path) -> Option<Untrusted> {
    walk(dir, &mut Verdicts::default(), true)
}

/// The directories already judged by `untrusted_with`: the ancestors that many paths
/// share (those of a services directory, for one) are looked at once per scan, not
/// once per service. Each entry: whether it is a symlink, and its verdict.
#[derive(Default)]
pub struct Verdicts(std::collections::HashMap<PathBuf, (bool, Option<Untrusted>)>);

/// `untrusted`, with the verdicts on directories taken from (and added to) `seen`. A
/// chain without a symlink (nor `.` or `..`) is its own resolved chain: walked once.
pub fn untrusted_with(path: &Path, seen: &mut Verdicts) -> Option<Untrusted> {
    walk(path, seen, false)
}

fn walk(path: &Path, seen: &mut Verdicts, leaf_below_ours: bool) -> Option<Untrusted> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(path)
    };
    let mut linked = abs
        .components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir));
    let (verdict, link) = judge_chain(&abs, seen, leaf_below_ours)?;
    linked |= link;
    if !linked {
        return verdict;
    }
    // As before the walk: a path that does not resolve is not judged.
    let resolved = std::fs::canonicalize(&abs).ok()?;
    verdict.or_else(|| judge_chain(&resolved, seen, leaf_below_ours)?.0)
}

/// The first verdict against `path` or one of its ancestors, and whether any of those
/// walked is a symlink. `None` if one cannot be looked at. The path itself is always
/// looked at afresh; its ancestors are taken from `seen` when judged before (their
/// verdict does not depend on the path: the walk only goes on above an entry that
/// passed, hence one owned by root or us, so the sticky exception applies to each).
fn judge_chain(
    path: &Path,
    seen: &mut Verdicts,
    leaf_below_ours: bool,
) -> Option<(Option<Untrusted>, bool)> {
    let mut linked = false;
    for (i, p) in path.ancestors().enumerate() {
        if p.as_os_str().is_empty() {
            continue;
        }
        let (link, verdict) = match seen.0.get(p).filter(|_| i > 0) {
            Some(known) => known.clone(),
            None => {
                let m = std::fs::symlink_metadata(p).ok()?;
                let below_ours = i > 0 || leaf_below_ours;
                let known = (m.file_type().is_symlink(), judge(p, &m, below_ours));
                if i > 0 {
                    seen.0.insert(p.to_path_buf(), known.clone());
                }
                known
            }
        };
        linked |= link;
        if verdict.is_some() {
            return Some((verdict, linked));
        }
    }
    Some((None, linked))
}

/// For unit tests: a directory StrictModes trusts, to hold what they create. The
/// clone's `target/` where it passes (it does not in a clone another user owns, for
/// one), else a root-owned place of the tests' own.
#[cfg(test)]
pub fn trusted_test_base() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    if untrusted(&target).is_none() {
        return target;
    }
    let base = PathBuf::from("/var/lib/orchestrator-tests");
    std::fs::create_dir_all(&base).expect("create /var/lib/orchestrator-tests");
    std::fs::set_permissions(&base, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod /var/lib/orchestrator-tests");
    base
}

/// A directory opened once: everything inside is reached through its descriptor, never
/// through its path again, and never through a symlink.
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Creates `path` (and missing parents, with `mode`) unless it exists, then opens it.
    /// The configured path itself may go through symlinks: it is the administrator's.
    pub fn create(path: &Path, mode: u32) -> io::Result<Dir> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)?;
        let fd = open_at(libc::AT_FDCWD, path, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's own verdict: owned by root or us and not writable by group or
    /// others (for a directory whose contents decide what root does).
    pub fn untrusted(&self) -> Option<Untrusted> {
        let m = File::from(self.fd.try_clone().ok()?).metadata().ok()?;
        judge(&self.path, &m, false)
    }

    /// True once the directory itself was removed (its link count drops to 0): whoever
    /// holds it should open the path anew.
    pub fn removed(&self) -> bool {
        // SAFETY: zeroed is a valid libc::stat; fstat on a descriptor we own writes it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::fstat(self.fd.as_raw_fd(), &mut st) == 0 && st.st_nlink == 0 }
    }

    /// Opens (creating with `mode`) `name` to append to: see `open_append`.
    pub fn open_append(&self, name: &str, mode: u32) -> io::Result<File> {
        let flags =
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let fd = open_at(self.fd.as_raw_fd(), Path::new(name), flags, mode)?;
        settle_regular(fd, true).map(|(f, _)| f)
    }

    /// Creates `name` afresh (whatever stood there, a symlink included, is unlinked
    /// first; `O_EXCL` then guarantees the file is the one we created).
    pub fn create_new(&self, name: &str, mode: u32) -> io::Result<File> {
        match self.unlink(name) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        let fd = open_at(self.fd.as_raw_fd(), Path::new(name), flags, mode)?;
        Ok(File::from(fd))
    }

    /// Reads at most `limit` bytes of the regular file `name` (no symlink, no FIFO).
    pub fn read(&self, name: &str, limit: u64) -> io::Result<Vec<u8>> {
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK;
        let fd = open_at(self.fd.as_raw_fd(), Path::new(name), flags, 0)?;
        let (f, _) = settle_regular(fd, false)?;
        let mut out = Vec::new();
        f.take(limit).read_to_end(&mut out)?;
        Ok(out)
    }

    /// `lstat` of `name`: `None` unless it is a regular file.
    pub fn regular(&self, name: &str) -> Option<libc::stat> {
        let c = CString::new(name).ok()?;
        // SAFETY: zeroed is a valid libc::stat; fstatat writes into it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid descriptor, string and out-pointer.
        let r = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        (r == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG).then_some(st)
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (cstr(Path::new(from))?, cstr(Path::new(to))?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid descriptor and strings; renameat never follows a final symlink.
        cvt(unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) }).map(drop)
    }

    /// Removes `name` (a symlink is removed, not followed).
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(Path::new(name))?;
        // SAFETY: valid descriptor and string.
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(drop)
    }

    /// The names in the directory (through the descriptor, not the path).
    pub fn names(&self) -> Vec<String> {
        let via = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        std::fs::read_dir(via)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// fsync of the directory (after a rename, so that it survives a power cut).
    pub fn sync(&self) -> io::Result<()> {
        // SAFETY: fsync on a descriptor we own.
        cvt(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map(drop)
    }
}

/// Creates `path` component by component (`mkdirat`, then `openat` with `O_DIRECTORY`),
/// following a symlink only where it stands in a directory that passes StrictModes (so
/// one planted by a service user in a directory it owns is refused), and hands the last
/// directory, when we created it, to `owner` with `fchown`. Returns the opened directory.
pub fn create_dir_chain(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<File> {
    if !path.is_absolute() {
        return Err(other("not an absolute path".into()));
    }
    let mut cur = open_at(
        libc::AT_FDCWD,
        Path::new("/"),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    let mut created = false;
    let mut walked = PathBuf::from("/");
    for comp in path.components().skip(1) {
        let name = Path::new(comp.as_os_str());
        walked.push(name);
        let parent_trusted = File::from(cur.try_clone()?)
            .metadata()
            .is_ok_and(|m| judge(&walked, &m, false).is_none());
        let nofollow = if parent_trusted { 0 } else { libc::O_NOFOLLOW };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | nofollow;
        let c = cstr(name)?;
        // SAFETY: valid descriptor and string.
        let made = unsafe { libc::mkdirat(cur.as_raw_fd(), c.as_ptr(), mode) };
        created = made == 0;
        if made != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::last_os_error());
        }
        cur = open_at(cur.as_raw_fd(), name, flags, 0).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) {
                other(format!(
                    "{} is a symlink or not a directory, in a directory others control",
                    walked.display()
                ))
            } else {
                e
            }
        })?;
    }
    let dir = File::from(cur);
    if let (true, Some((uid, gid))) = (created, owner) {
        // SAFETY: fchown on a descriptor we own.
        cvt(unsafe { libc::fchown(dir.as_raw_fd(), uid, gid) })?;
    }
    Ok(dir)
}

/// Makes ready the directory of a Unix socket the daemon is about to bind at `path`:
/// created (0755, component by component, `create_dir_chain`) if missing, then, as
/// root, judged by StrictModes with the socket counted as root's entry (so a socket
/// right in /tmp passes, one in a directory another user owns or may write to does
/// not: they could swap the socket, or the directory, for something else).
pub fn socket_dir(path: &Path) -> io::Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_absolute() {
        create_dir_chain(dir, 0o755, None)?;
    } else {
        std::fs::create_dir_all(dir)?;
    }
    if euid() != 0 {
        return Ok(());
    }
    match untrusted_home_of_own_entry(dir) {
        Some(u) => Err(other(format!("socket directory refused: {u} ({RULE})"))),
        None => Ok(()),
    }
}

/// Binds the Unix socket `fd` to `path` so that its file is born with `mode` (the
/// permission bits, 0o777 at most): `bind` gives the file the socket's own mode (0777)
/// minus the umask, so the bind runs on a short-lived thread that first leaves the
/// process's shared file-system context (`unshare(CLONE_FS)`) and sets its own umask.
/// No other thread's umask changes meanwhile, and no chmod by path follows, which a
/// symlink renamed over the fresh socket could redirect to any file.
pub fn bind_unix(fd: RawFd, path: &Path, mode: u32) -> io::Result<()> {
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(other(format!(
            "{}: not a usable socket path (too long?)",
            path.display()
        )));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let mask = !mode & 0o777;
    let bind = move || -> io::Result<()> {
        // SAFETY: unshare(CLONE_FS) only gives this thread its own copy of the umask,
        // current and root directories; the thread ends right after the bind.
        cvt(unsafe { libc::unshare(libc::CLONE_FS) })?;
        // SAFETY: umask has no preconditions; it is this thread's alone now.
        unsafe { libc::umask(mask as libc::mode_t) };
        // SAFETY: addr is a valid sockaddr_un; fd stays open for the call.
        cvt(unsafe {
            libc::bind(
                fd,
                &addr as *const libc::sockaddr_un as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        })
        .map(drop)
    };
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("bind".into())
            .spawn_scoped(s, bind)?
            .join()
            .unwrap_or_else(|_| Err(other("the bind thread failed".into())))
    })
}

/// A fresh Unix socket of `kind` (`SOCK_STREAM`, `SOCK_DGRAM`), close-on-exec.
pub fn unix_socket(kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket call; the result is checked.
    let raw = cvt(unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: raw is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

#[cfg(test)]
mod tests;
