//! Whose identity a task runs under.
//!
//! A root agent runs every task as the local account named by the
//! submitter's credential (`alice` submits → the task runs as the `alice`
//! account on the node, with her groups, home and shell), and refuses to run
//! anything as root unless started with `--allow-root-jobs`. An agent that is
//! not root, or was started with `--run-as-self` (what `launcher up` does for
//! a personal cluster), runs every task as itself.

use std::ffi::{CStr, CString};

/// A resolved local account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (including the primary one).
    pub groups: Vec<u32>,
    /// Home directory.
    pub home: String,
    /// Login shell.
    pub shell: String,
}

/// How the agent chooses the account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Every task runs as the agent's own user.
    RunAsSelf,
    /// Tasks run as the submitter's local account.
    Submitter {
        /// Whether a submitter that maps to uid 0 may run.
        allow_root: bool,
    },
}

impl Policy {
    /// The default for this process: map users when root, else run as self.
    pub fn default_for_agent(run_as_self: bool, allow_root: bool) -> Policy {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if run_as_self || !root {
            Policy::RunAsSelf
        } else {
            Policy::Submitter { allow_root }
        }
    }

    /// The account a task of `user` runs as; None means "as the agent itself".
    pub fn account_for(&self, user: &str, node: &str) -> Result<Option<Account>, String> {
        match *self {
            Policy::RunAsSelf => Ok(None),
            Policy::Submitter { allow_root } => {
                let acct = lookup(user)?.ok_or_else(|| {
                    format!(
                        "no local account '{user}' on node {node}: jobs run as the submitting user, so create the account, \
                         submit with a credential named after a local user, or start the agent with --run-as-self"
                    )
                })?;
                if acct.uid == 0 && !allow_root {
                    return Err(format!(
                        "refusing to run a job as root on node {node} (credential user '{user}'); start the agent with --allow-root-jobs to permit it"
                    ));
                }
                Ok(Some(acct))
            }
        }
    }
}

/// Look up a local account (passwd and group databases).
pub fn lookup(name: &str) -> Result<Option<Account>, String> {
    let cname = CString::new(name).map_err(|_| format!("user name {name:?} contains NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; buf outlives the strings read below.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 {
        return Err(format!("cannot look up user {name}: {}", std::io::Error::from_raw_os_error(rc)));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: getpwnam_r succeeded, so these point to NUL-terminated strings in buf.
    let (home, shell) = unsafe {
        (
            CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
            CStr::from_ptr(pwd.pw_shell).to_string_lossy().into_owned(),
        )
    };
    let mut n: libc::c_int = 64;
    let mut groups: Vec<libc::gid_t> = vec![0; n as usize];
    loop {
        // SAFETY: groups has room for n entries; n is updated with the needed count.
        let r = unsafe { libc::getgrouplist(cname.as_ptr(), pwd.pw_gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n as usize);
            break;
        }
        groups.resize(n as usize + 16, 0);
        n = groups.len() as libc::c_int;
    }
    Ok(Some(Account { name: name.to_string(), uid: pwd.pw_uid, gid: pwd.pw_gid, groups, home, shell }))
}

/// Run `f` with this thread's filesystem identity set to `acct` (Linux
/// setfsuid/setfsgid are per thread), so files are opened with the user's
/// permissions, not root's.
pub fn with_fs_identity<T>(acct: Option<&Account>, f: impl FnOnce() -> T) -> T {
    let Some(a) = acct else { return f() };
    // SAFETY: setfsgid/setfsuid only change this thread's filesystem credentials; restored below.
    let (old_gid, old_uid) = unsafe { (libc::setfsgid(a.gid), libc::setfsuid(a.uid)) };
    let r = f();
    // SAFETY: as above.
    unsafe {
        libc::setfsuid(old_uid as libc::uid_t);
        libc::setfsgid(old_gid as libc::gid_t);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_is_refused_by_default() {
        let root = lookup("root").unwrap().expect("root account");
        assert_eq!((root.uid, root.gid), (0, 0));
        let p = Policy::Submitter { allow_root: false };
        let e = p.account_for("root", "n1").unwrap_err();
        assert!(e.contains("refusing to run a job as root") && e.contains("--allow-root-jobs"), "{e}");
        assert_eq!(Policy::Submitter { allow_root: true }.account_for("root", "n1").unwrap().unwrap().uid, 0);
    }

    #[test]
    fn unknown_user_is_a_clear_error() {
        let e = Policy::Submitter { allow_root: false }.account_for("no-such-user-xyz", "n7").unwrap_err();
        assert!(e.contains("no local account 'no-such-user-xyz' on node n7") && e.contains("--run-as-self"), "{e}");
        assert_eq!(lookup("no-such-user-xyz").unwrap(), None);
    }

    #[test]
    fn run_as_self_never_maps() {
        assert_eq!(Policy::RunAsSelf.account_for("anyone", "n").unwrap(), None);
    }
}
