//! Users and groups by name or number, for `user`/`group` (docs/hardening.md,
//! docs/unattended.md): the account, its primary group, home and supplementary groups.
//!
//! A dynamically linked build asks the C library, so NSS (LDAP, systemd-userdb, ...)
//! answers as for any program on the box. A statically linked build (`make static`,
//! `target_feature = "crt-static"`, which every musl build is) must never reach NSS: a
//! static glibc would try to load its modules at run time, and in an empty root there are
//! none. There the two files are read directly, as BusyBox does. The parsers below are
//! plain functions of the files' text, compiled and unit-tested in every build. This
//! file only looks accounts up; it never changes an identity.

#![cfg_attr(not(target_feature = "crt-static"), allow(dead_code))]

use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub gid: u32,
}

pub use imp::{group, id_in_use, supplementary_groups, user};

/// The C library's lookups, NSS included.
#[cfg(not(target_feature = "crt-static"))]
mod imp {
    use super::{Group, User};
    use nix::unistd::{getgrouplist, Gid, Uid};
    use std::ffi::CString;

    /// `key` is a name or a uid.
    pub fn user(key: &str) -> Result<Option<User>, String> {
        match key.parse::<u32>() {
            Ok(n) => nix::unistd::User::from_uid(Uid::from_raw(n)),
            Err(_) => nix::unistd::User::from_name(key),
        }
        .map(|u| {
            u.map(|u| User {
                uid: u.uid.as_raw(),
                gid: u.gid.as_raw(),
                home: u.dir,
                name: u.name,
            })
        })
        .map_err(|e| e.to_string())
    }

    /// `key` is a name or a gid.
    pub fn group(key: &str) -> Result<Option<Group>, String> {
        match key.parse::<u32>() {
            Ok(n) => nix::unistd::Group::from_gid(Gid::from_raw(n)),
            Err(_) => nix::unistd::Group::from_name(key),
        }
        .map(|g| {
            g.map(|g| Group {
                gid: g.gid.as_raw(),
                name: g.name,
            })
        })
        .map_err(|e| e.to_string())
    }

    /// The user's groups: its primary group first, then every group that lists it.
    pub fn supplementary_groups(user: &User) -> Result<Vec<u32>, String> {
        let name = CString::new(user.name.clone()).map_err(|_| "invalid name".to_string())?;
        getgrouplist(&name, Gid::from_raw(user.gid))
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .map_err(|e| e.to_string())
    }

    /// Whether a user or a group has the number `id` (see `found`).
    pub fn id_in_use(id: u32) -> Result<bool, String> {
        let user = super::found(nix::unistd::User::from_uid(Uid::from_raw(id)))
            .map_err(|e| format!("cannot look up uid {id}: {e}"))?;
        let group = super::found(nix::unistd::Group::from_gid(Gid::from_raw(id)))
            .map_err(|e| format!("cannot look up gid {id}: {e}"))?;
        Ok(user || group)
    }
}

/// Whether a C library lookup found an entry. glibc answers ENOENT when /etc/passwd or
/// /etc/group is missing: no file is no accounts there. Any other failure is not an
/// answer, and never taken for "nobody has it".
#[cfg_attr(target_feature = "crt-static", allow(dead_code))]
fn found<T>(r: nix::Result<Option<T>>) -> Result<bool, nix::Error> {
    match r {
        Ok(entry) => Ok(entry.is_some()),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The text of an accounts file read directly: a missing file has no accounts; a
/// file that cannot be read is an error.
fn accounts_text(path: &str, read: std::io::Result<String>) -> Result<String, String> {
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        r => r.map_err(|e| format!("cannot read {path}: {e}")),
    }
}

/// `/etc/passwd` and `/etc/group`, read directly.
#[cfg(target_feature = "crt-static")]
mod imp {
    use super::{Group, User};

    fn read(path: &str) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
    }

    pub fn user(key: &str) -> Result<Option<User>, String> {
        Ok(super::find_user(&read("/etc/passwd")?, key))
    }

    pub fn group(key: &str) -> Result<Option<Group>, String> {
        Ok(super::find_group(&read("/etc/group")?, key))
    }

    pub fn supplementary_groups(user: &User) -> Result<Vec<u32>, String> {
        Ok(super::member_of(&read("/etc/group")?, &user.name, user.gid))
    }

    /// Whether a user or a group has the number `id` (see `accounts_text`).
    pub fn id_in_use(id: u32) -> Result<bool, String> {
        let text = |path| super::accounts_text(path, std::fs::read_to_string(path));
        let key = id.to_string();
        Ok(super::find_user(&text("/etc/passwd")?, &key).is_some()
            || super::find_group(&text("/etc/group")?, &key).is_some())
    }
}

/// The fields of each entry line: blank lines, comments and NIS `+`/`-` lines skipped.
fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
        .map(|l| l.split(':').collect())
}

/// The first `/etc/passwd` entry whose name is `key`, or whose uid is `key` when it is
/// a number (as getpwnam/getpwuid); malformed lines are skipped.
pub fn find_user(passwd: &str, key: &str) -> Option<User> {
    let by_uid = key.parse::<u32>().ok();
    entries(passwd).find_map(|f| {
        let [name, _, uid, gid, _, home, ..] = f.as_slice() else {
            return None;
        };
        let (uid, gid) = (uid.parse().ok()?, gid.parse().ok()?);
        let hit = match by_uid {
            Some(n) => uid == n,
            None => *name == key,
        };
        hit.then(|| User {
            name: name.to_string(),
            uid,
            gid,
            home: PathBuf::from(home),
        })
    })
}

/// The first `/etc/group` entry whose name (or gid, for a number) is `key`.
pub fn find_group(group: &str, key: &str) -> Option<Group> {
    let by_gid = key.parse::<u32>().ok();
    entries(group).find_map(|f| {
        let [name, _, gid, ..] = f.as_slice() else {
            return None;
        };
        let gid = gid.parse().ok()?;
        let hit = match by_gid {
            Some(n) => gid == n,
            None => *name == key,
        };
        hit.then(|| Group {
            name: name.to_string(),
            gid,
        })
    })
}

/// As getgrouplist: `primary` first, then the gid of every group listing `user` as a
/// member, each once.
pub fn member_of(group: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut out = vec![primary];
    for f in entries(group) {
        let [_, _, gid, members, ..] = f.as_slice() else {
            continue;
        };
        let Ok(gid) = gid.parse::<u32>() else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == user) && !out.contains(&gid) {
            out.push(gid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
# comment
root:x:0:0:root:/root:/bin/sh
+nisuser::::::
broken:x:notanumber:1::/:/bin/sh
short:x:5
web:x:1000:1000:Web server,,,:/srv/web:/usr/sbin/nologin
";

    const GROUP: &str = "\
root:x:0:
web:x:1000:
audio:x:29:pulse,web
video:x:44: web , other
staff:x:50:webmaster
dup:x:1000:web
";

    #[test]
    fn users_by_name_and_by_uid() {
        let web = find_user(PASSWD, "web").unwrap();
        assert_eq!(
            web,
            User {
                name: "web".into(),
                uid: 1000,
                gid: 1000,
                home: "/srv/web".into()
            }
        );
        assert_eq!(find_user(PASSWD, "1000"), Some(web));
        assert_eq!(find_user(PASSWD, "0").unwrap().name, "root");
        assert_eq!(find_user(PASSWD, "nobody"), None);
        assert_eq!(find_user(PASSWD, "broken"), None, "malformed uid");
        assert_eq!(find_user(PASSWD, "short"), None, "too few fields");
        assert_eq!(find_user(PASSWD, "+nisuser"), None);
        assert_eq!(find_user("", "root"), None);
    }

    #[test]
    fn groups_by_name_and_by_gid() {
        assert_eq!(find_group(GROUP, "audio").unwrap().gid, 29);
        assert_eq!(find_group(GROUP, "44").unwrap().name, "video");
        assert_eq!(find_group(GROUP, "wheel"), None);
    }

    #[test]
    fn supplementary_groups_list_the_primary_first_then_memberships_once() {
        assert_eq!(member_of(GROUP, "web", 1000), vec![1000, 29, 44]);
        assert_eq!(member_of(GROUP, "root", 0), vec![0]);
        assert_eq!(
            member_of(GROUP, "webmaster", 7),
            vec![7, 50],
            "names match whole"
        );
    }

    #[test]
    fn a_missing_accounts_file_is_no_accounts_and_an_unreadable_one_an_error() {
        use std::io::{Error, ErrorKind};
        let missing = Err(Error::from(ErrorKind::NotFound));
        assert_eq!(accounts_text("/etc/passwd", missing), Ok(String::new()));
        let denied = Err(Error::from_raw_os_error(libc::EACCES));
        let e = accounts_text("/etc/passwd", denied).unwrap_err();
        assert!(e.starts_with("cannot read /etc/passwd: "), "{e}");
        assert_eq!(
            accounts_text("/etc/group", Ok(GROUP.into())),
            Ok(GROUP.into())
        );
        use nix::errno::Errno;
        assert_eq!(found::<()>(Err(Errno::ENOENT)), Ok(false));
        assert_eq!(found(Ok(Some(()))), Ok(true));
        assert_eq!(found::<()>(Ok(None)), Ok(false));
        assert_eq!(found::<()>(Err(Errno::EACCES)), Err(Errno::EACCES));
        assert_eq!(found::<()>(Err(Errno::EIO)), Err(Errno::EIO));
    }

    #[test]
    fn this_build_finds_root() {
        let root = user("root").unwrap().expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(group("0").unwrap().map(|g| g.gid), Some(0));
        assert_eq!(supplementary_groups(&root).unwrap().first(), Some(&0));
        assert_eq!(id_in_use(0), Ok(true));
    }
}
