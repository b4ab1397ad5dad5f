//! Putting a service's binary in place for `upgrade` and `rollback`
//! (docs/sockets-and-upgrades.md), so that the path execve opens always names a whole
//! binary: the new one is copied beside the old one (so the final rename never crosses a
//! file system, wherever PATH lives), fsynced, given the old one's owner and mode; the old
//! one is kept as `<binary>.prev` by a hard link (the same inode: the same bytes, mode and
//! owner); then one rename puts the new one in place and the directory is fsynced.
//! Rollback is the one rename back.
//!
//! The new binary is opened once, when checked (`open_checked`), and only that
//! descriptor is hashed and copied: replacing the path after the checks changes nothing.
//!
//! This never follows a symlink at the binary's place (the caller passes the resolved
//! path, which is what runs), never writes into the running binary (a new inode every
//! time, so no ETXTBSY and no half-written file), and never decides anything about the
//! service.

use crate::common::safe_fs;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `<binary>.prev`: the binary an upgrade replaced.
pub fn prev_path(binary: &Path) -> PathBuf {
    let mut p = binary.as_os_str().to_owned();
    p.push(".prev");
    PathBuf::from(p)
}

/// A hidden name beside the binary for a file being prepared.
fn beside(binary: &Path, tag: &str) -> io::Result<PathBuf> {
    let name = binary
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mut n = std::ffi::OsString::from(".");
    n.push(name);
    n.push(tag);
    Ok(binary.with_file_name(n))
}

/// Opens `new` once and checks it before anything is touched: a regular file someone
/// may execute, and, as root, one that passes StrictModes (owned by root or us, in
/// directories nobody else may write to, but for the sticky exception), so that nobody
/// else can change it after the checks. What runs or is installed afterwards is read
/// from this descriptor, never from the path again; the path must still name the very
/// file opened once judged, or it is refused as changed while checked.
pub fn open_checked(new: &Path) -> Result<File, String> {
    let shown = new.display();
    let (f, m) = safe_fs::open_regular(new, true).map_err(|e| format!("{shown}: {e}"))?;
    if m.permissions().mode() & 0o111 == 0 {
        return Err(format!("{shown} is not executable"));
    }
    if nix::unistd::geteuid().is_root() {
        if let Some(u) = safe_fs::untrusted(new) {
            return Err(format!(
                "refusing {shown}, which another user could change: {u} ({})",
                safe_fs::RULE
            ));
        }
    }
    let same = fs::metadata(new).is_ok_and(|now| now.dev() == m.dev() && now.ino() == m.ino());
    if !same {
        return Err(format!("{shown} changed while it was being checked"));
    }
    Ok(f)
}

/// Installs the file `src` (opened by `open_checked` from `new`, named in messages) at
/// `binary`, keeping the old one as `<binary>.prev` (replacing an older `.prev`). On
/// error nothing has changed at `binary`.
pub fn install(binary: &Path, new: &Path, src: &mut File) -> Result<(), String> {
    let old = fs::symlink_metadata(binary)
        .map_err(|e| format!("service binary {}: {e}", binary.display()))?;
    if !old.is_file() {
        return Err(format!(
            "service binary {} is not a regular file",
            binary.display()
        ));
    }
    let tmp = beside(binary, ".upgrade").map_err(|e| e.to_string())?;
    let result = copy_in(src, &tmp, &old).and_then(|()| {
        let prev = prev_path(binary);
        let prev_tmp = beside(binary, ".prev.tmp")?;
        let _ = fs::remove_file(&prev_tmp);
        fs::hard_link(binary, &prev_tmp)?;
        fs::rename(&prev_tmp, &prev)?;
        fs::rename(&tmp, binary)?;
        sync_dir(binary)
    });
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!(
            "cannot install {} at {}: {e}",
            new.display(),
            binary.display()
        )
    })
}

/// The copy of `src`, from its start, at `tmp`, with the owner and mode of the binary
/// it replaces, on disk.
fn copy_in(src: &mut File, tmp: &Path, old: &fs::Metadata) -> io::Result<()> {
    let _ = fs::remove_file(tmp);
    src.seek(io::SeekFrom::Start(0))?;
    let mut dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .custom_flags(libc::O_NOFOLLOW)
        .open(tmp)?;
    // A plain loop: std's io::copy between files brings its copy_file_range and
    // splice machinery into the binary, for a copy made once per upgrade.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
    }
    // Owner first: a chown clears set-id bits, the mode then puts back what the old
    // binary had.
    std::os::unix::fs::fchown(&dst, Some(old.uid()), Some(old.gid()))?;
    dst.set_permissions(fs::Permissions::from_mode(old.mode() & 0o7777))?;
    dst.sync_all()
}

/// `.NAME.running` beside `NAME`: the daemon's hard link to the binary a service runs,
/// so that its bytes survive a new file renamed over `NAME` (docs/watching.md).
pub fn running_path(binary: &Path) -> PathBuf {
    beside(binary, ".running").unwrap_or_default()
}

/// Which file a path names, and its content as far as metadata tells: a rename over
/// the path changes the inode, a rewrite in place the size or the modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ident {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl Ident {
    pub fn of(m: &fs::Metadata) -> Ident {
        Ident {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    /// The regular file at `path` (a symlink is not followed), if there is one.
    pub fn at(path: &Path) -> Option<Ident> {
        fs::symlink_metadata(path)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| Ident::of(&m))
    }

    /// The same file (whatever its content).
    pub fn same_file(&self, other: &Ident) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

/// Makes `.NAME.running` a hard link to what `binary` names now (a new link beside it,
/// renamed over the old one, so it always names a whole file).
pub fn link_running(binary: &Path) -> io::Result<()> {
    let tmp = beside(binary, ".running.tmp")?;
    let _ = fs::remove_file(&tmp);
    fs::hard_link(binary, &tmp)?;
    fs::rename(&tmp, running_path(binary)).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// The file `.NAME.running` names becomes `<binary>.prev` (one rename, then the
/// directory is fsynced): the previous binary of an upgrade by a file renamed over
/// `binary`.
pub fn running_becomes_prev(binary: &Path) -> Result<(), String> {
    let running = running_path(binary);
    fs::rename(&running, prev_path(binary))
        .and_then(|()| sync_dir(binary))
        .map_err(|e| {
            format!(
                "cannot keep {} as the previous binary: {e}",
                running.display()
            )
        })
}

/// Puts `<binary>.prev` back at `binary` (one rename), and fsyncs the directory.
pub fn restore_prev(binary: &Path) -> Result<(), String> {
    let prev = prev_path(binary);
    if fs::symlink_metadata(&prev).is_err() {
        return Err(format!(
            "no previous binary to go back to ({})",
            prev.display()
        ));
    }
    fs::rename(&prev, binary)
        .and_then(|()| sync_dir(binary))
        .map_err(|e| format!("cannot put {} back: {e}", prev.display()))
}

fn sync_dir(binary: &Path) -> io::Result<()> {
    let dir = binary
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_keeps_the_old_inode_and_rollback_puts_it_back() {
        let dir = std::env::temp_dir().join(format!("orch-install-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("svc");
        fs::write(&bin, b"old").unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o751)).unwrap();
        let ino = fs::metadata(&bin).unwrap().ino();
        let new = dir.join("new");
        fs::write(&new, b"new").unwrap();
        assert!(open_checked(&new).unwrap_err().contains("not executable"));
        fs::set_permissions(&new, fs::Permissions::from_mode(0o755)).unwrap();
        let mut src = open_checked(&new).unwrap();
        // Replaced after the checks: the file checked is the one installed.
        fs::remove_file(&new).unwrap();
        fs::write(&new, b"evil").unwrap();
        install(&bin, &new, &mut src).unwrap();
        assert_eq!(fs::read(&bin).unwrap(), b"new");
        assert_eq!(fs::metadata(&bin).unwrap().mode() & 0o7777, 0o751);
        assert_eq!(fs::metadata(prev_path(&bin)).unwrap().ino(), ino);
        restore_prev(&bin).unwrap();
        assert_eq!(fs::read(&bin).unwrap(), b"old");
        assert_eq!(fs::metadata(&bin).unwrap().ino(), ino);
        assert!(restore_prev(&bin)
            .unwrap_err()
            .contains("no previous binary"));
        let _ = fs::remove_dir_all(&dir);
    }
}
