//! Who a child runs as and with which resource limits (SPEC §12), applied in
//! the child between fork and exec.
//!
//! Names are resolved in the parent, at config load ([`lookup_user`],
//! [`lookup_group`], `getgrouplist`): the database functions take locks and
//! allocate, which a forked child of a threaded daemon must not do. The child
//! gets plain integers and a pre-allocated group list and only makes
//! syscalls ([`apply_in_child`]), in the one safe order: limits first (a
//! hard limit can only be raised while still root), then supplementary
//! groups, gid, uid — after which no id of the process is root any more, so
//! nothing can switch back (checked).

use std::ffi::CString;
use std::io;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

/// A resolved `user`/`group` pair: what the child switches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Login name (USER, LOGNAME).
    pub name: String,
    /// Home directory (HOME).
    pub home: PathBuf,
    /// Target uid.
    pub uid: u32,
    /// Target primary gid.
    pub gid: u32,
    /// Supplementary groups from the group database (includes `gid`).
    pub groups: Vec<u32>,
}

/// One resource of `rlimits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// RLIMIT_NOFILE.
    Nofile,
    /// RLIMIT_NPROC.
    Nproc,
    /// RLIMIT_CORE.
    Core,
    /// RLIMIT_MEMLOCK.
    Memlock,
    /// RLIMIT_STACK.
    Stack,
    /// RLIMIT_AS.
    As,
    /// RLIMIT_FSIZE.
    Fsize,
    /// RLIMIT_CPU.
    Cpu,
}

/// The config names of the resources, in [`Resource`] order.
pub const RESOURCE_NAMES: &[&str] = &[
    "nofile", "nproc", "core", "memlock", "stack", "as", "fsize", "cpu",
];

impl Resource {
    /// The resource called `name` in the config.
    pub fn from_name(name: &str) -> Option<Resource> {
        use Resource::*;
        Some(match name {
            "nofile" => Nofile,
            "nproc" => Nproc,
            "core" => Core,
            "memlock" => Memlock,
            "stack" => Stack,
            "as" => As,
            "fsize" => Fsize,
            "cpu" => Cpu,
            _ => return None,
        })
    }

    /// Its config name.
    pub fn name(self) -> &'static str {
        RESOURCE_NAMES[self as usize]
    }

    fn raw(self) -> libc::__rlimit_resource_t {
        use Resource::*;
        match self {
            Nofile => libc::RLIMIT_NOFILE,
            Nproc => libc::RLIMIT_NPROC,
            Core => libc::RLIMIT_CORE,
            Memlock => libc::RLIMIT_MEMLOCK,
            Stack => libc::RLIMIT_STACK,
            As => libc::RLIMIT_AS,
            Fsize => libc::RLIMIT_FSIZE,
            Cpu => libc::RLIMIT_CPU,
        }
    }
}

/// A limit value: a number, or None for "unlimited".
pub type Limit = Option<u64>;

/// A user by name or by uid (a string of digits is a uid too).
/// `Ok(None)`: no such user in the database.
pub fn lookup_user(spec: &str) -> io::Result<Option<User>> {
    let found = match spec.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(spec),
    };
    found.map_err(io::Error::from)
}

/// A group by name or gid; a gid without a database entry is taken as is.
/// `Ok(None)`: no group of that name.
pub fn lookup_group(spec: &str) -> io::Result<Option<u32>> {
    if let Ok(gid) = spec.parse::<u32>() {
        return Ok(Some(gid));
    }
    Group::from_name(spec)
        .map(|g| g.map(|g| g.gid.as_raw()))
        .map_err(io::Error::from)
}

/// The credentials for `user` (else the daemon's own user) with primary
/// group `gid` (else the user's): the supplementary groups come from the
/// group database.
pub fn credentials(user: &User, gid: Option<u32>) -> io::Result<Credentials> {
    let gid = gid.unwrap_or(user.gid.as_raw());
    let name = CString::new(user.name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name holds a NUL"))?;
    let groups = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .map_err(io::Error::from)?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    Ok(Credentials {
        name: user.name.clone(),
        home: user.dir.clone(),
        uid: user.uid.as_raw(),
        gid,
        groups,
    })
}

/// The daemon's own user (for a `group` without `user`).
pub fn own_user() -> io::Result<Option<User>> {
    User::from_uid(Uid::effective()).map_err(io::Error::from)
}

/// Whether the daemon runs as root.
pub fn is_root() -> bool {
    Uid::effective().is_root()
}

/// Checks in the parent, before spawning, that every limit can be set: a
/// limit above the current hard one needs privilege (CAP_SYS_RESOURCE, in
/// practice root). The error names the limit; the child's own `setrlimit`
/// could only return a bare errno.
pub fn check_limits(limits: &[(Resource, Limit)]) -> Result<(), String> {
    if is_root() {
        return Ok(());
    }
    for &(res, want) in limits {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit with a valid struct.
        if unsafe { libc::getrlimit(res.raw(), &mut cur) } != 0 {
            continue;
        }
        let want_raw = want.unwrap_or(libc::RLIM_INFINITY);
        if want_raw > cur.rlim_max {
            return Err(format!(
                "spawn error: rlimits.{}: {} is above the hard limit {} and the daemon cannot raise it",
                res.name(),
                show(want),
                show((cur.rlim_max != libc::RLIM_INFINITY).then_some(cur.rlim_max)),
            ));
        }
    }
    Ok(())
}

fn show(limit: Limit) -> String {
    limit.map_or("unlimited".to_string(), |n| n.to_string())
}

/// What the child applies before exec, all resolved in the parent.
#[derive(Debug, Clone, Default)]
pub struct ChildSetup {
    /// umask, or inherited.
    pub umask: Option<u32>,
    /// Limits (soft = hard).
    pub limits: Vec<(Resource, Limit)>,
    /// Identity to switch to.
    pub ids: Option<(u32, u32, Vec<libc::gid_t>)>,
}

impl ChildSetup {
    /// Whether anything must run in the child (else `posix_spawn` is used).
    pub fn is_empty(&self) -> bool {
        self.umask.is_none() && self.limits.is_empty() && self.ids.is_none()
    }
}

/// Runs in the forked child: only syscalls on values prepared before the
/// fork (async-signal-safe; no allocation, no locks).
pub fn apply_in_child(setup: &ChildSetup) -> io::Result<()> {
    // SAFETY (whole block): plain syscalls with integer arguments or
    // pointers into memory allocated before the fork.
    unsafe {
        if let Some(mask) = setup.umask {
            libc::umask(mask as libc::mode_t);
        }
        for &(res, limit) in &setup.limits {
            let v = limit.unwrap_or(libc::RLIM_INFINITY);
            let l = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            if libc::setrlimit(res.raw(), &l) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some((uid, gid, groups)) = &setup.ids {
            // Groups while still root; then gid; uid last, which gives up
            // the right to change any of them.
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(*gid) != 0
                || libc::setuid(*uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Real, effective and saved ids all moved: a way back would be
            // a bug worth refusing to exec for.
            if *uid != 0 && libc::setuid(0) == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in RESOURCE_NAMES {
            let r = Resource::from_name(name).expect("known");
            assert_eq!(r.name(), *name);
        }
        assert_eq!(Resource::from_name("nofiles"), None);
    }

    #[test]
    fn root_resolves_with_its_groups() {
        let root = lookup_user("root").unwrap().unwrap();
        let c = credentials(&root, None).unwrap();
        assert_eq!((c.uid, c.gid), (0, 0));
        assert!(c.groups.contains(&0));
        assert_eq!(
            lookup_user("0").unwrap().map(|u| u.name),
            Some("root".into())
        );
        assert!(lookup_user("no-such-user-xyz").unwrap().is_none());
        assert_eq!(lookup_group("4242").unwrap(), Some(4242));
        assert!(lookup_group("no-such-group-xyz").unwrap().is_none());
    }
}
