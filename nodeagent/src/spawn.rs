//! Starting a task without fork: `clone(CLONE_VM | CLONE_VFORK)`, the way
//! glibc's `posix_spawn` does it.
//!
//! `std`/`tokio` `Command` with a `pre_exec` closure must fork, and forking the
//! multi-threaded agent copies its page tables, then throws them away at exec
//! (and the parent takes copy-on-write faults meanwhile). Here the child shares
//! the parent's memory and runs on its own small stack; the calling thread is
//! suspended by the kernel until the child has exec'd or exited, so nothing is
//! copied.
//!
//! The rules that make sharing memory safe (from glibc's `spawni.c`):
//! - everything the child needs (C strings, pointer arrays) is built in the
//!   parent beforehand; the child only issues raw system calls: no allocation,
//!   no locks, no thread-locals except `errno` (it is the suspended parent
//!   thread's and nobody reads it meanwhile);
//! - the calling thread blocks every signal around `clone`, so the child starts
//!   with all signals blocked; the child resets every caught signal to its
//!   default before unblocking, so no parent handler ever runs in it;
//! - credentials are changed with the raw syscalls, never glibc's `setuid`,
//!   which would broadcast the change to every thread of the shared parent;
//! - a failing step stores (step, errno) in a struct the parent owns and
//!   exits 127; the parent, resumed, reaps it and returns the error.
//!
//! The child's steps, in order (the contract the agent's `pre_exec` had):
//! signal dispositions, join the cgroup, CPU affinity, groups/gid/uid, working
//! directory, process group, stdio, the inherited descriptor, death signal,
//! empty signal mask, execve.

use std::ffi::{c_char, c_int, c_long, c_ulong, c_void, CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use std::sync::OnceLock;

/// Credentials the child takes on before exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    /// Real, effective and saved user id.
    pub uid: u32,
    /// Real, effective and saved group id.
    pub gid: u32,
    /// Supplementary groups (replace the parent's entirely).
    pub groups: Vec<u32>,
}

/// What to start and how. Build with [`SpawnSpec::new`], then set the fields
/// that apply.
#[derive(Clone, Copy)]
pub struct SpawnSpec<'a> {
    /// The file to execute, absolute or relative to `cwd`. No `PATH` search
    /// happens in the child: resolve it first.
    pub program: &'a CStr,
    /// Arguments, `argv[0]` included (must not be empty).
    pub argv: &'a [CString],
    /// The complete environment, `K=V` each.
    pub envp: &'a [&'a CStr],
    /// Directory to enter, after the credential change (so it must be
    /// reachable as the user). `None`: the parent's.
    pub cwd: Option<&'a CStr>,
    /// Descriptor for the child's stdin. `None`: /dev/null.
    pub stdin: Option<RawFd>,
    /// Descriptor for the child's stdout. `None`: /dev/null.
    pub stdout: Option<RawFd>,
    /// Descriptor for the child's stderr. `None`: /dev/null.
    pub stderr: Option<RawFd>,
    /// Put the child in a new process group of its own (`setpgid(0, 0)`).
    pub new_pgroup: bool,
    /// Drop to these credentials (needs root, or the same ids).
    pub creds: Option<&'a Creds>,
    /// An open `cgroup.procs` the child writes `0` ("myself") to, first.
    pub cgroup_procs_fd: Option<RawFd>,
    /// CPUs the child may run on.
    pub affinity: Option<&'a libc::cpu_set_t>,
    /// One descriptor (3 or above) the program inherits: its close-on-exec
    /// flag is cleared in the child. Every other descriptor the parent opens
    /// is close-on-exec already (Rust opens them so).
    pub keep_fd: Option<RawFd>,
    /// Signal the child gets when the *thread* that spawned it exits
    /// (`PR_SET_PDEATHSIG`, a kernel rule): spawn from long-lived threads.
    pub pdeathsig: Option<c_int>,
}

impl<'a> SpawnSpec<'a> {
    /// A spec with everything else off: stdio on /dev/null, the parent's
    /// directory, credentials, group, CPUs, no inherited descriptor.
    pub fn new(program: &'a CStr, argv: &'a [CString], envp: &'a [&'a CStr]) -> Self {
        SpawnSpec {
            program,
            argv,
            envp,
            cwd: None,
            stdin: None,
            stdout: None,
            stderr: None,
            new_pgroup: false,
            creds: None,
            cgroup_procs_fd: None,
            affinity: None,
            keep_fd: None,
            pdeathsig: None,
        }
    }
}

/// The step of the child's setup that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Resetting signal handlers to their defaults.
    Signals = 1,
    /// Writing `0` to the cgroup's `cgroup.procs`.
    Cgroup,
    /// `sched_setaffinity`.
    Affinity,
    /// `setgroups`.
    Setgroups,
    /// `setresgid`.
    Setgid,
    /// `setresuid`.
    Setuid,
    /// `chdir`.
    Chdir,
    /// `setpgid`.
    Setpgid,
    /// Moving the stdio descriptors onto 0, 1 and 2.
    Stdio,
    /// Clearing close-on-exec on the inherited descriptor.
    KeepFd,
    /// `PR_SET_PDEATHSIG`, or the parent was already gone.
    Pdeathsig,
    /// Clearing the signal mask.
    Sigmask,
    /// `execve` itself.
    Execve,
}

impl Step {
    const ALL: [Step; 13] = [
        Step::Signals,
        Step::Cgroup,
        Step::Affinity,
        Step::Setgroups,
        Step::Setgid,
        Step::Setuid,
        Step::Chdir,
        Step::Setpgid,
        Step::Stdio,
        Step::KeepFd,
        Step::Pdeathsig,
        Step::Sigmask,
        Step::Execve,
    ];

    fn from_u8(v: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u8 == v)
    }

    fn what(self) -> &'static str {
        match self {
            Step::Signals => "cannot reset signal handlers in the child",
            Step::Cgroup => "cannot join the task's cgroup (writing to cgroup.procs)",
            Step::Affinity => "cannot set the CPU affinity (sched_setaffinity)",
            Step::Setgroups => "cannot set the supplementary groups (setgroups)",
            Step::Setgid => "cannot set the group id (setresgid)",
            Step::Setuid => "cannot set the user id (setresuid)",
            Step::Chdir => "cannot enter the working directory as the task's user (chdir)",
            Step::Setpgid => "cannot start a new process group (setpgid)",
            Step::Stdio => "cannot set up stdin/stdout/stderr (dup3)",
            Step::KeepFd => "cannot pass the inherited descriptor on (fcntl)",
            Step::Pdeathsig => "cannot set the parent-death signal, or the parent is gone",
            Step::Sigmask => "cannot clear the signal mask",
            Step::Execve => "cannot execute the program (execve)",
        }
    }
}

/// Why the child failed before or at exec: the step and its errno. It is the
/// payload of the [`io::Error`] that [`spawn`] returns (whose kind follows the
/// errno); get it back with `err.get_ref().and_then(|e| e.downcast_ref::<SpawnError>())`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpawnError {
    /// The failing step.
    pub step: Step,
    /// Its errno.
    pub errno: i32,
}

impl std::fmt::Display for SpawnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step.what(), io::Error::from_raw_os_error(self.errno))
    }
}

impl std::error::Error for SpawnError {}

impl SpawnError {
    /// The [`SpawnError`] inside an error from [`spawn`], if it is one.
    pub fn of(err: &io::Error) -> Option<&SpawnError> {
        err.get_ref().and_then(|e| e.downcast_ref::<SpawnError>())
    }

    fn into_io(self) -> io::Error {
        io::Error::new(io::Error::from_raw_os_error(self.errno).kind(), self)
    }
}

/// A started child. Wait for it with [`Child::wait`]; one dropped unwaited is
/// reaped by a background thread, so it never stays a zombie.
#[derive(Debug)]
pub struct Child {
    pid: i32,
    /// `None` on kernels before 5.2 (no `CLONE_PIDFD`): then waiting blocks a
    /// thread of tokio's blocking pool.
    pidfd: Option<OwnedFd>,
    /// Reaped, or the duty to reap is handed over: `Drop` must not.
    reaped: bool,
}

impl Child {
    /// The child's process id (and process group id, with `new_pgroup`).
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// A pidfd for the child (for `pidfd_send_signal`), where the kernel gave one.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.pidfd.as_ref().map(|f| f.as_fd())
    }

    /// Wait for the child to end and reap it. Needs a tokio runtime with I/O
    /// enabled. Only this (or `Drop`) reaps the child: nothing in the agent
    /// waits for any child (`waitpid(-1)`), and tokio reaps only its own.
    pub async fn wait(mut self) -> io::Result<ExitStatus> {
        let pid = self.pid;
        let readable = tokio::io::Interest::READABLE;
        // SAFETY: the descriptor is `self.pidfd`, which stays open (and the
        // same) until `self` drops, after `afd` below.
        let registered = self
            .pidfd
            .as_ref()
            .and_then(|fd| unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd.as_raw_fd(), readable) }.ok());
        let Some(afd) = registered else {
            // The blocking thread reaps: from here `Drop` must not, even if
            // this future is dropped first (the pid could be reused by then).
            self.reaped = true;
            return tokio::task::spawn_blocking(move || wait_blocking(pid)).await.map_err(io::Error::other)?;
        };
        loop {
            // A pidfd turns readable when the process exits; reap by pid then
            // (it cannot be reused before we reap it) to get the raw status.
            if let Some(status) = try_reap(pid)? {
                self.reaped = true;
                return Ok(status);
            }
            let mut ready = afd.readable().await?;
            ready.clear_ready();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if !matches!(try_reap(self.pid), Ok(None)) {
            return;
        }
        let pid = self.pid;
        // Rare (a caller gave up on the child): a thread is simpler than a
        // runtime task, which could be dropped again at runtime shutdown.
        let _ = std::thread::Builder::new().name("spawn-reaper".into()).spawn(move || wait_blocking(pid));
    }
}

/// Reap `pid` if it has ended.
fn try_reap(pid: i32) -> io::Result<Option<ExitStatus>> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: plain syscall on our own child's pid, writing to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn wait_blocking(pid: i32) -> io::Result<ExitStatus> {
    loop {
        let mut status: c_int = 0;
        // SAFETY: plain syscall on our own child's pid, writing to a local.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// /dev/null, opened once (read-write, close-on-exec) for stdio left `None`.
fn dev_null() -> io::Result<RawFd> {
    static DEV_NULL: OnceLock<OwnedFd> = OnceLock::new();
    if let Some(fd) = DEV_NULL.get() {
        return Ok(fd.as_raw_fd());
    }
    let f = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
    // A racing thread may have set it first: then ours is closed here.
    let _ = DEV_NULL.set(f.into());
    Ok(DEV_NULL.get().expect("set above").as_raw_fd())
}

/// Everything the child reads, prepared by the parent, and where it reports
/// a failure. Lives on the parent's stack for the duration of `clone`.
struct ChildArgs {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdio: [c_int; 3],
    new_pgroup: bool,
    /// uid, gid, groups pointer and count.
    creds: Option<(u32, u32, *const u32, usize)>,
    cgroup_fd: c_int,
    affinity: *const libc::cpu_set_t,
    keep_fd: c_int,
    pdeathsig: c_int,
    parent: libc::pid_t,
    /// 0 while all is well, else the failed [`Step`].
    failed_step: AtomicU8,
    errno: AtomicI32,
}

/// The child's stack: mmap'd, with a guard page below it.
struct ChildStack {
    base: *mut c_void,
    len: usize,
}

const CHILD_STACK: usize = 64 * 1024;

thread_local! {
    /// This thread's child stack, reused by its next spawn.
    static STACK: std::cell::Cell<Option<ChildStack>> = const { std::cell::Cell::new(None) };
}

impl ChildStack {
    fn new() -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
        let len = CHILD_STACK + page;
        // SAFETY: a fresh anonymous private mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, len };
        // SAFETY: the lowest page of the mapping just made; the stack grows
        // down towards it, so an overflow faults instead of corrupting memory.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    fn top(&self) -> *mut c_void {
        // The mapping's end: page-aligned, so 16-byte aligned as the ABI wants.
        self.base.wrapping_byte_add(self.len)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the child that ran
        // on it has exec'd or exited (CLONE_VFORK) before we get here.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Signal mask size the kernel's rt_sig* calls take (64 signals).
const KERNEL_SIGSET: c_long = 8;

/// Set the calling thread's whole signal mask (saving the old one), with the
/// raw syscall: glibc's `pthread_sigmask` would leave its own
/// internal signals (setxid, cancel) unblocked.
fn set_thread_sigmask(mask: &u64, old: Option<&mut u64>) -> io::Result<()> {
    let old = old.map_or(std::ptr::null_mut(), |o| o as *mut u64);
    // SAFETY: the kernel reads 8 bytes from `mask` and writes 8 to `old`,
    // both valid (or null).
    let r = unsafe {
        libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK as c_long, mask as *const u64, old, KERNEL_SIGSET)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Start `spec.program`. Returns once the child has exec'd. If any step in
/// the child fails, the child has been reaped and the error carries a
/// [`SpawnError`] naming the step, its kind following the errno (`NotFound`
/// for a missing program, `PermissionDenied` for a refused setuid...).
pub fn spawn(spec: &SpawnSpec) -> io::Result<Child> {
    if spec.argv.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cannot start {:?}: argv is empty; give at least argv[0] (the program name)", spec.program),
        ));
    }
    if let Some(fd) = spec.keep_fd.filter(|fd| *fd < 3) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot pass descriptor {fd} on: 0, 1 and 2 become the child's stdio; use stdin/stdout/stderr for them"
            ),
        ));
    }
    let null = if spec.stdin.is_none() || spec.stdout.is_none() || spec.stderr.is_none() { dev_null()? } else { -1 };
    let argv: Vec<*const c_char> =
        spec.argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp: Vec<*const c_char> =
        spec.envp.iter().map(|e| e.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let args = ChildArgs {
        program: spec.program.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: spec.cwd.map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio: [spec.stdin.unwrap_or(null), spec.stdout.unwrap_or(null), spec.stderr.unwrap_or(null)],
        new_pgroup: spec.new_pgroup,
        creds: spec.creds.map(|c| (c.uid, c.gid, c.groups.as_ptr(), c.groups.len())),
        cgroup_fd: spec.cgroup_procs_fd.unwrap_or(-1),
        affinity: spec.affinity.map_or(std::ptr::null(), |a| a as *const libc::cpu_set_t),
        keep_fd: spec.keep_fd.unwrap_or(-1),
        pdeathsig: spec.pdeathsig.unwrap_or(0),
        // SAFETY: getpid has no preconditions.
        parent: unsafe { libc::getpid() },
        failed_step: AtomicU8::new(0),
        errno: AtomicI32::new(0),
    };
    // One stack per spawning thread, kept: mapping and unmapping one per task
    // cost page faults and, in a multi-threaded agent, a TLB shootdown of
    // every other thread's CPU. The thread is blocked while the child runs
    // on it (CLONE_VFORK), so it is never in use twice.
    let stack = match STACK.with(|s| s.take()) {
        Some(s) => s,
        None => ChildStack::new()?,
    };
    let mut pidfd: c_int = -1;
    let mut old_mask = 0u64;
    set_thread_sigmask(&!0u64, Some(&mut old_mask))?;
    // SAFETY: `child_main` runs on `stack` (ours, unused by anyone else),
    // reads `args` and stores only into its two atomics; `args` outlives the call: with CLONE_VFORK the kernel
    // returns here only after the child has exec'd or exited, and the child
    // touches no other memory of ours (see `exec_in_child`). `pidfd` is where
    // CLONE_PIDFD stores the new descriptor (the parent_tid argument).
    let pid = unsafe {
        libc::clone(
            child_main,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &args as *const ChildArgs as *mut c_void,
            &mut pidfd as *mut c_int,
        )
    };
    let clone_err = io::Error::last_os_error();
    let restored = set_thread_sigmask(&old_mask, None);
    STACK.with(|s| s.set(Some(stack)));
    if pid < 0 {
        return Err(io::Error::new(clone_err.kind(), format!("cannot start a process (clone): {clone_err}")));
    }
    // SAFETY: the kernel filled `pidfd` with a fresh descriptor only we own
    // (or left our -1 on kernels without CLONE_PIDFD).
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    // Keep the pointer arrays alive until here: the child read them.
    drop((argv, envp));
    if let Some(step) = Step::from_u8(args.failed_step.load(Ordering::Acquire)) {
        // It exited 127 right after reporting: reap it now, no zombie left.
        let _ = wait_blocking(pid);
        return Err(SpawnError { step, errno: args.errno.load(Ordering::Relaxed) }.into_io());
    }
    let child = Child { pid, pidfd, reaped: false };
    // Fails only if the kernel refuses to restore a mask it just set.
    restored?;
    Ok(child)
}

/// The child's entry point (on its own stack, sharing the parent's memory).
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildArgs` the suspended parent passed to clone,
    // alive until we exec or exit.
    let args = unsafe { &*(arg as *const ChildArgs) };
    // SAFETY: we are the vfork child this function is written for.
    let Err((step, errno)) = unsafe { exec_in_child(args) };
    args.errno.store(errno, Ordering::Relaxed);
    args.failed_step.store(step as u8, Ordering::Release);
    // SAFETY: ends this process only (exit_group of a fresh single-thread
    // process); the parent is resumed by the kernel.
    unsafe { libc::syscall(libc::SYS_exit_group, 127 as c_long) };
    127
}

type Failed = (Step, c_int);

/// Turn a raw syscall's result into `Ok(value)` or the step with its errno.
#[inline(always)]
fn check(step: Step, r: c_long) -> Result<c_long, Failed> {
    if r == -1 {
        Err((step, errno()))
    } else {
        Ok(r)
    }
}

/// errno of the last syscall (the parent thread's TLS slot, ours meanwhile).
#[inline(always)]
fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}

/// The kernel's `struct sigaction` (x86_64 and aarch64 layout: handler first).
#[repr(C)]
#[derive(Default)]
struct KernelSigaction {
    handler: usize,
    flags: c_ulong,
    restorer: usize,
    mask: u64,
}

/// Set up the child and exec. Returns only on failure.
///
/// # Safety
/// Call only in the `CLONE_VM | CLONE_VFORK` child, with all signals blocked.
/// Only raw syscalls: no allocation, no locks, no panics (no indexing that
/// could fail), nothing of the parent's memory written but `args`' results.
unsafe fn exec_in_child(a: &ChildArgs) -> Result<std::convert::Infallible, Failed> {
    // SAFETY (for the whole body): every syscall gets pointers into `a` or
    // into locals, valid for the call; the integer arguments are widened to
    // c_long because `syscall` is variadic.
    unsafe {
        reset_signal_handlers()?;
        if a.cgroup_fd >= 0 {
            let n =
                check(Step::Cgroup, libc::syscall(libc::SYS_write, a.cgroup_fd as c_long, c"0".as_ptr(), 1 as c_long))?;
            if n != 1 {
                return Err((Step::Cgroup, libc::EIO));
            }
        }
        if !a.affinity.is_null() {
            let size = std::mem::size_of::<libc::cpu_set_t>() as c_long;
            check(Step::Affinity, libc::syscall(libc::SYS_sched_setaffinity, 0 as c_long, size, a.affinity))?;
        }
        if let Some((uid, gid, groups, count)) = a.creds {
            check(Step::Setgroups, libc::syscall(libc::SYS_setgroups, count as c_long, groups))?;
            let (g, u) = (gid as c_long, uid as c_long);
            check(Step::Setgid, libc::syscall(libc::SYS_setresgid, g, g, g))?;
            check(Step::Setuid, libc::syscall(libc::SYS_setresuid, u, u, u))?;
        }
        if !a.cwd.is_null() {
            check(Step::Chdir, libc::syscall(libc::SYS_chdir, a.cwd))?;
        }
        if a.new_pgroup {
            check(Step::Setpgid, libc::syscall(libc::SYS_setpgid, 0 as c_long, 0 as c_long))?;
        }
        // A source already in 0..=2 could be overwritten by an earlier dup3
        // (stdout = 2, stderr = 1): move every such source above 2 first.
        let mut stdio = a.stdio;
        for fd in stdio.iter_mut() {
            if *fd < 3 {
                let moved = libc::syscall(libc::SYS_fcntl, *fd as c_long, libc::F_DUPFD_CLOEXEC as c_long, 3 as c_long);
                *fd = check(Step::Stdio, moved)? as c_int;
            }
        }
        // dup3 onto 0, 1, 2 clears close-on-exec there; the sources keep theirs.
        for (target, fd) in (0 as c_long..).zip(stdio) {
            check(Step::Stdio, libc::syscall(libc::SYS_dup3, fd as c_long, target, 0 as c_long))?;
        }
        if a.keep_fd >= 0 {
            check(
                Step::KeepFd,
                libc::syscall(libc::SYS_fcntl, a.keep_fd as c_long, libc::F_SETFD as c_long, 0 as c_long),
            )?;
        }
        if a.pdeathsig != 0 {
            let (opt, sig) = (libc::PR_SET_PDEATHSIG as c_long, a.pdeathsig as c_long);
            check(Step::Pdeathsig, libc::syscall(libc::SYS_prctl, opt, sig, 0 as c_long, 0 as c_long, 0 as c_long))?;
            // The parent may have died before the prctl: then no signal comes.
            if libc::syscall(libc::SYS_getppid) != a.parent as c_long {
                return Err((Step::Pdeathsig, libc::ESRCH));
            }
        }
        let empty = 0u64;
        let how = libc::SIG_SETMASK as c_long;
        let null = std::ptr::null_mut::<u64>();
        check(Step::Sigmask, libc::syscall(libc::SYS_rt_sigprocmask, how, &empty as *const u64, null, KERNEL_SIGSET))?;
        libc::syscall(libc::SYS_execve, a.program, a.argv, a.envp);
        Err((Step::Execve, errno()))
    }
}

/// Reset every signal with a handler to its default (a parent handler must
/// never run in the child: it would run on shared memory), and SIGPIPE from
/// ignored to default, as std's `Command` does (Rust ignores SIGPIPE; tasks
/// expect the default). Other ignored signals stay ignored across exec, as
/// with fork.
///
/// # Safety
/// As [`exec_in_child`].
unsafe fn reset_signal_handlers() -> Result<(), Failed> {
    const NSIG: c_int = 64;
    for sig in 1..=NSIG {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old = KernelSigaction::default();
        let null = std::ptr::null::<KernelSigaction>();
        // SAFETY: reads the disposition into a local of the kernel's layout.
        let r = unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig as c_long, null, &mut old as *mut KernelSigaction, KERNEL_SIGSET)
        };
        if r != 0 {
            continue;
        }
        let keep = old.handler == libc::SIG_DFL || (old.handler == libc::SIG_IGN && sig != libc::SIGPIPE);
        if keep {
            continue;
        }
        let dfl = KernelSigaction::default();
        let none = std::ptr::null_mut::<KernelSigaction>();
        // SAFETY: installs SIG_DFL from a local; no handler, so no restorer.
        let r = unsafe {
            libc::syscall(libc::SYS_rt_sigaction, sig as c_long, &dfl as *const KernelSigaction, none, KERNEL_SIGSET)
        };
        check(Step::Signals, r)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Duration;

    fn cs(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    fn args(a: &[&str]) -> Vec<CString> {
        a.iter().map(|s| cs(s)).collect()
    }

    /// A close-on-exec pipe: (read end, write end).
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two descriptors into the local array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are fresh descriptors we own.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    /// Run `sh -c script` with stdout on a pipe, after `tweak`; (status, stdout).
    /// (argv and envp are leaked: a few bytes per test, so `tweak` may borrow the caller's locals.)
    async fn sh<'a>(script: &str, tweak: impl FnOnce(&mut SpawnSpec<'a>)) -> (ExitStatus, String) {
        let argv: &'a [CString] = Box::leak(args(&["sh", "-c", script]).into_boxed_slice());
        let envp: &'a [&'a CStr] = Box::leak(vec![c"PATH=/usr/bin:/bin"].into_boxed_slice());
        let (r, w) = pipe();
        let mut spec = SpawnSpec::new(c"/bin/sh", argv, envp);
        spec.stdout = Some(w.as_raw_fd());
        tweak(&mut spec);
        let child = spawn(&spec).unwrap();
        drop(w);
        let out = read_all(r);
        (child.wait().await.unwrap(), out)
    }

    /// The state letter of `pid` if it is our child (from /proc/PID/stat), with its comm.
    fn child_state(pid: i32) -> Option<(char, String)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (comm, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
        let mut f = rest.split(' ');
        let state = f.next()?.chars().next()?;
        let ppid: i32 = f.next()?.parse().ok()?;
        (ppid == std::process::id() as i32).then(|| (state, comm.to_string()))
    }

    /// Our children that are zombies, by pid.
    fn zombie_children() -> Vec<(i32, String)> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| child_state(pid).filter(|(s, _)| *s == 'Z').map(|(_, comm)| (pid, comm)))
            .collect()
    }

    #[tokio::test]
    async fn exit_codes_and_signals_come_back() {
        let (st, _) = sh("exit 7", |_| {}).await;
        assert_eq!(st.code(), Some(7));
        let (st, _) = sh("exit 0", |_| {}).await;
        assert!(st.success());
        let (st, _) = sh("kill -9 $$", |_| {}).await;
        assert_eq!((st.code(), st.signal()), (None, Some(9)));
    }

    #[tokio::test]
    async fn argv_and_environment_are_exactly_as_given() {
        let (_, out) = sh(r#"printf '<%s>\n' "$0" "$@""#, |_| {}).await;
        assert_eq!(out, "<sh>\n", "no extra arguments");
        let argv = args(&["sh", "-c", r#"printf '<%s>\n' "$0" "$@""#, "zero", "a b", "", "c"]);
        let envp: Vec<&CStr> = vec![];
        let (r, w) = pipe();
        let mut spec = SpawnSpec::new(c"/bin/sh", &argv, &envp);
        spec.stdout = Some(w.as_raw_fd());
        let child = spawn(&spec).unwrap();
        drop(w);
        assert_eq!(read_all(r), "<zero>\n<a b>\n<>\n<c>\n");
        assert!(child.wait().await.unwrap().success());

        // `env` prints its environment, which must be ours only, in order.
        let argv = args(&["env"]);
        let envp = [c"ZED=last first", c"A=1", c"EMPTY="];
        let (r, w) = pipe();
        let mut spec = SpawnSpec::new(c"/usr/bin/env", &argv, &envp);
        spec.stdout = Some(w.as_raw_fd());
        let child = spawn(&spec).unwrap();
        drop(w);
        assert_eq!(read_all(r), "ZED=last first\nA=1\nEMPTY=\n");
        assert!(child.wait().await.unwrap().success());
    }

    #[tokio::test]
    async fn working_directory_applies_and_a_missing_one_names_chdir() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        let cwd = cs(real.to_str().unwrap());
        let (st, out) = sh("pwd -P", |s| s.cwd = Some(&cwd)).await;
        assert!(st.success());
        assert_eq!(out.trim_end(), real.to_str().unwrap());

        let missing = cs(&format!("{}/no-such-dir", real.display()));
        let argv = args(&["true"]);
        let mut spec = SpawnSpec::new(c"/bin/true", &argv, &[]);
        spec.cwd = Some(&missing);
        let e = spawn(&spec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(SpawnError::of(&e), Some(&SpawnError { step: Step::Chdir, errno: libc::ENOENT }));
        assert!(e.to_string().contains("working directory") && e.to_string().contains("chdir"), "{e}");
    }

    #[tokio::test]
    async fn stdio_goes_to_the_given_descriptors_and_to_dev_null_when_none() {
        let argv = args(&["sh", "-c", "read line; echo \"out:$line\"; echo err >&2"]);
        let (in_r, in_w) = pipe();
        let (out_r, out_w) = pipe();
        let (err_r, err_w) = pipe();
        let mut spec = SpawnSpec::new(c"/bin/sh", &argv, &[]);
        (spec.stdin, spec.stdout, spec.stderr) =
            (Some(in_r.as_raw_fd()), Some(out_w.as_raw_fd()), Some(err_w.as_raw_fd()));
        let child = spawn(&spec).unwrap();
        drop((in_r, out_w, err_w));
        std::io::Write::write_all(&mut std::fs::File::from(in_w), b"hello\n").unwrap();
        assert_eq!(read_all(out_r), "out:hello\n");
        assert_eq!(read_all(err_r), "err\n");
        assert!(child.wait().await.unwrap().success());

        // stdin and stdout left None: both /dev/null.
        let (_err_r, err_w) = pipe();
        let fds = stdio_of_a_sleeper(|s| s.stderr = Some(err_w.as_raw_fd())).await;
        assert_eq!(fds, ["/dev/null".to_string(), "/dev/null".into(), fd_target(err_w.as_raw_fd())]);
    }

    /// Where descriptor `fd` of this process points.
    fn fd_target(fd: RawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap().display().to_string()
    }

    /// Start `sleep` with `tweak`, read where its 0, 1 and 2 point (from
    /// outside: no shell redirection reshuffles them), then kill it.
    async fn stdio_of_a_sleeper(tweak: impl FnOnce(&mut SpawnSpec)) -> [String; 3] {
        let argv = args(&["sleep", "30"]);
        let mut spec = SpawnSpec::new(c"/bin/sleep", &argv, &[]);
        tweak(&mut spec);
        let child = spawn(&spec).unwrap();
        let fds = [0, 1, 2].map(|n| std::fs::read_link(format!("/proc/{}/fd/{n}", child.id())).unwrap());
        // SAFETY: signals our own, not yet reaped, child.
        unsafe { libc::kill(child.id(), libc::SIGKILL) };
        assert_eq!(child.wait().await.unwrap().signal(), Some(libc::SIGKILL));
        fds.map(|p| p.display().to_string())
    }

    #[tokio::test]
    async fn stdio_sources_already_on_0_1_2_are_not_clobbered() {
        // stdin from a pipe, stdout = our fd 0, stderr = our fd 1: a naive
        // dup2(pipe, 0), dup2(0, 1), dup2(1, 2) would leave all three on the pipe.
        if std::fs::read_link("/proc/self/fd/0").is_err() || std::fs::read_link("/proc/self/fd/1").is_err() {
            eprintln!("SKIP: this test process has no fd 0 or 1");
            return;
        }
        let (in_r, _in_w) = pipe();
        let fds =
            stdio_of_a_sleeper(|s| (s.stdin, s.stdout, s.stderr) = (Some(in_r.as_raw_fd()), Some(0), Some(1))).await;
        assert_eq!(fds, [fd_target(in_r.as_raw_fd()), fd_target(0), fd_target(1)]);
        // And stdout = 2, stderr = 1 (swapped).
        let fds = stdio_of_a_sleeper(|s| (s.stdout, s.stderr) = (Some(2), Some(1))).await;
        assert_eq!(fds, ["/dev/null".to_string(), fd_target(2), fd_target(1)]);
    }

    #[test]
    fn a_missing_program_is_an_enoent_error_and_leaves_no_zombie() {
        // The failed child carries its spawning thread's name as comm: find it by that.
        let e = std::thread::Builder::new()
            .name("enoent-probe".into())
            .spawn(|| {
                let argv = args(&["nope"]);
                spawn(&SpawnSpec::new(c"/no/such/program", &argv, &[])).unwrap_err()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        assert_eq!(SpawnError::of(&e), Some(&SpawnError { step: Step::Execve, errno: libc::ENOENT }));
        assert!(e.to_string().contains("execve") && e.to_string().contains("No such file"), "{e}");
        let z: Vec<_> = zombie_children().into_iter().filter(|(_, c)| c == "enoent-probe").collect();
        assert!(z.is_empty(), "zombies left: {z:?}");

        // Not executable: EACCES.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-executable");
        std::fs::write(&file, "#!/bin/sh\n").unwrap();
        let prog = cs(file.to_str().unwrap());
        let argv = args(&["x"]);
        let e = spawn(&SpawnSpec::new(&prog, &argv, &[])).unwrap_err();
        assert_eq!(SpawnError::of(&e).map(|s| (s.step, s.errno)), Some((Step::Execve, libc::EACCES)), "{e}");
    }

    #[test]
    fn bad_input_is_refused_before_starting_anything() {
        let e = spawn(&SpawnSpec::new(c"/bin/true", &[], &[])).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("argv is empty"), "{e}");
        let argv = args(&["true"]);
        let mut spec = SpawnSpec::new(c"/bin/true", &argv, &[]);
        spec.keep_fd = Some(1);
        let e = spawn(&spec).err().unwrap();
        assert!(e.kind() == io::ErrorKind::InvalidInput && e.to_string().contains("descriptor 1"), "{e}");
    }

    #[tokio::test]
    async fn new_process_group_has_the_child_as_leader() {
        // Field 5 of /proc/self/stat is the process group (comm has no spaces here).
        let script = "read -r pid _ _ _ pgid _ < /proc/self/stat; echo $pid $pgid $$";
        let (_, out) = sh(script, |s| s.new_pgroup = true).await;
        let f: Vec<&str> = out.split_whitespace().collect();
        // `read` runs in the shell itself, so /proc/self is the shell.
        assert_eq!(f.len(), 3, "{out}");
        assert_eq!(f[0], f[1], "pgid == pid: {out}");
        let (_, out) = sh(script, |_| {}).await;
        let f: Vec<&str> = out.split_whitespace().collect();
        // SAFETY: getpgrp has no preconditions.
        let ours = unsafe { libc::getpgrp() }.to_string();
        assert_eq!(f[1], ours, "without new_pgroup the child stays in ours: {out}");
    }

    #[tokio::test]
    async fn keep_fd_is_inherited_and_other_cloexec_descriptors_are_not() {
        let dup_above = |fd: &OwnedFd, min: c_int| {
            // SAFETY: duplicates a descriptor we own into a fresh close-on-exec one.
            let d = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
            assert!(d >= min);
            // SAFETY: fresh descriptor, ours.
            unsafe { OwnedFd::from_raw_fd(d) }
        };
        // Descriptors this process got without close-on-exec (a test
        // harness's jobserver pipes, say) pass to every child, as with fork.
        let leaky: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            // SAFETY: F_GETFD on a descriptor number only reads its flags.
            .filter(|fd| *fd > 2 && unsafe { libc::fcntl(*fd, libc::F_GETFD) } == 0)
            .collect();
        let (a, b) = pipe();
        let keep = dup_above(&a, 300);
        let other = dup_above(&b, 400);
        let argv = args(&["ls", "/proc/self/fd"]);
        let (r, w) = pipe();
        let mut spec = SpawnSpec::new(c"/bin/ls", &argv, &[]);
        spec.stdout = Some(w.as_raw_fd());
        spec.keep_fd = Some(keep.as_raw_fd());
        let child = spawn(&spec).unwrap();
        drop(w);
        let fds: Vec<i32> = read_all(r).split_whitespace().map(|s| s.parse().unwrap()).collect();
        assert!(child.wait().await.unwrap().success());
        assert!(fds.contains(&keep.as_raw_fd()), "keep_fd {} missing from {fds:?}", keep.as_raw_fd());
        assert!(!fds.contains(&other.as_raw_fd()), "cloexec fd {} leaked: {fds:?}", other.as_raw_fd());
        // 0, 1, 2, the kept one, ls's own directory handle and the leaky ones; nothing else.
        let extra: Vec<&i32> =
            fds.iter().filter(|fd| **fd > 2 && **fd != keep.as_raw_fd() && !leaky.contains(fd)).collect();
        assert!(extra.len() <= 1, "unexpected descriptors {extra:?} in {fds:?}");
        // Our copy of keep_fd is still close-on-exec (the flag was cleared in the child's table).
        // SAFETY: F_GETFD on a descriptor we own.
        assert_eq!(unsafe { libc::fcntl(keep.as_raw_fd(), libc::F_GETFD) }, libc::FD_CLOEXEC);
    }

    #[tokio::test]
    async fn affinity_is_applied() {
        // SAFETY: zeroed cpu_set_t is the empty set; sched_getaffinity fills it.
        let mut ours: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: writes into the local set.
        assert_eq!(unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut ours) }, 0);
        // SAFETY: CPU_ISSET reads the local set.
        let allowed: Vec<usize> =
            (0..libc::CPU_SETSIZE as usize).filter(|c| unsafe { libc::CPU_ISSET(*c, &ours) }).collect();
        if allowed.len() < 2 {
            eprintln!("SKIP (partly): one CPU only, the mask cannot be narrowed visibly");
        }
        let cpu = *allowed.last().unwrap();
        // SAFETY: as above, on a local set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: cpu < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        let (st, out) = sh("grep Cpus_allowed_list /proc/self/status", |s| s.affinity = Some(&set)).await;
        assert!(st.success());
        assert_eq!(out.split_whitespace().nth(1), Some(cpu.to_string().as_str()), "{out}");
    }

    #[tokio::test]
    async fn cgroup_write_failure_names_the_step() {
        // A read-only descriptor: the child's write fails with EBADF.
        let ro = std::fs::File::open("/dev/null").unwrap();
        let argv = args(&["true"]);
        let mut spec = SpawnSpec::new(c"/bin/true", &argv, &[]);
        spec.cgroup_procs_fd = Some(ro.as_raw_fd());
        let e = spawn(&spec).unwrap_err();
        assert_eq!(SpawnError::of(&e), Some(&SpawnError { step: Step::Cgroup, errno: libc::EBADF }), "{e}");
        assert!(e.to_string().contains("cgroup.procs"), "{e}");
    }

    #[tokio::test]
    async fn the_child_joins_the_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: joining a cgroup needs root");
            return;
        }
        // Any hierarchy we can make a group in: cgroup v2, else the v1 pids controller.
        let name = format!("launcher-spawn-test-{}", std::process::id());
        let Some((dir, line)) =
            [("/sys/fs/cgroup/unified", "0::"), ("/sys/fs/cgroup", "0::"), ("/sys/fs/cgroup/pids", "pids:")]
                .into_iter()
                .map(|(root, tag)| (std::path::Path::new(root).join(&name), tag))
                .find(|(d, _)| d.parent().unwrap().join("cgroup.procs").exists() && std::fs::create_dir(d).is_ok())
                .map(|(d, tag)| (d, format!("{tag}/{name}")))
        else {
            eprintln!("SKIP: no cgroup hierarchy to make a group in");
            return;
        };
        let procs = std::fs::OpenOptions::new().write(true).open(dir.join("cgroup.procs")).unwrap();
        let (st, out) = sh("cat /proc/self/cgroup", |s| s.cgroup_procs_fd = Some(procs.as_raw_fd())).await;
        let _ = std::fs::remove_dir(&dir);
        assert!(st.success());
        assert!(out.lines().any(|l| l.ends_with(&line)), "{line} not in:\n{out}");
    }

    #[tokio::test]
    async fn credentials_change_as_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: changing credentials needs root");
            return;
        }
        let Some(nobody) = crate::users::lookup("nobody").unwrap() else {
            eprintln!("SKIP: no 'nobody' account");
            return;
        };
        let creds = Creds { uid: nobody.uid, gid: nobody.gid, groups: nobody.groups.clone() };
        let (st, out) = sh("id -u; id -g; id -G", |s| {
            s.creds = Some(&creds);
            s.cwd = Some(c"/");
        })
        .await;
        assert!(st.success());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[..2], [nobody.uid.to_string(), nobody.gid.to_string()], "{out}");
        let mut got: Vec<u32> = lines[2].split_whitespace().map(|g| g.parse().unwrap()).collect();
        let mut want: Vec<u32> = creds.groups.iter().copied().chain([creds.gid]).collect();
        got.sort_unstable();
        got.dedup();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got, want, "{out}");
        // Saved ids too (setresuid, not just the effective one).
        let (_, out) = sh("grep -E '^(Uid|Gid):' /proc/self/status", |s| s.creds = Some(&creds)).await;
        for (l, id) in out.lines().zip([nobody.uid, nobody.gid]) {
            assert!(l.split_whitespace().skip(1).all(|f| f == id.to_string()), "{out}");
        }
        // This (root) process keeps its own ids: the raw syscalls touched the child only.
        // SAFETY: getuid/getgid have no preconditions.
        assert_eq!(unsafe { (libc::getuid(), libc::getgid()) }, (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signal_handlers_are_reset_and_sigpipe_is_default() {
        // A SIGTERM handler in this process (tokio installs a real one).
        let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let (st, _) = sh("kill -TERM $$; sleep 1; exit 0", |_| {}).await;
        assert_eq!(st.signal(), Some(libc::SIGTERM));
        // Rust ignores SIGPIPE; the task must not (as with std's Command).
        let (st, out) = sh("grep SigIgn /proc/self/status; kill -PIPE $$; sleep 1; exit 0", |_| {}).await;
        assert_eq!(st.signal(), Some(libc::SIGPIPE), "{out}");
        let ign = u64::from_str_radix(out.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(ign & (1 << (libc::SIGPIPE - 1)), 0, "SIGPIPE still ignored: {out}");
    }

    #[test]
    fn the_signal_mask_is_empty_in_the_child() {
        let out = std::thread::spawn(|| {
            // SAFETY: sigset ops on a local set, then this thread's mask.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::sigaddset(&mut set, libc::SIGTERM);
                assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
            }
            let argv = args(&["grep", "SigBlk", "/proc/self/status"]);
            let (r, w) = pipe();
            let mut spec = SpawnSpec::new(c"/bin/grep", &argv, &[]);
            spec.stdout = Some(w.as_raw_fd());
            let child = spawn(&spec).unwrap();
            drop(w);
            let out = read_all(r);
            assert!(wait_blocking(child.id()).unwrap().success());
            let mut child = child;
            child.reaped = true;
            // Our own mask is back to what it was.
            let me = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            (out, me.lines().find(|l| l.starts_with("SigBlk")).unwrap().to_string())
        })
        .join()
        .unwrap();
        assert_eq!(out.0.split_whitespace().nth(1), Some("0000000000000000"), "{out:?}");
        let ours = u64::from_str_radix(out.1.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(ours, (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGTERM - 1)), "{out:?}");
    }

    #[tokio::test]
    async fn pdeathsig_fires_when_the_spawning_thread_exits() {
        let argv = args(&["sleep", "30"]);
        let child = std::thread::spawn(move || {
            let mut spec = SpawnSpec::new(c"/bin/sleep", &argv, &[]);
            spec.pdeathsig = Some(libc::SIGKILL);
            spawn(&spec).unwrap()
        })
        .join()
        .unwrap();
        let st = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("no death signal came");
        assert_eq!(st.unwrap().signal(), Some(libc::SIGKILL));

        // Set but the parent thread lives on: it runs normally.
        let (st, _) = sh("exit 3", |s| s.pdeathsig = Some(libc::SIGKILL)).await;
        assert_eq!(st.code(), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_spawns_are_all_reaped() {
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(async {
                    let argv = args(&["true"]);
                    let mut pids = Vec::new();
                    for _ in 0..500 {
                        let child = spawn(&SpawnSpec::new(c"/bin/true", &argv, &[])).unwrap();
                        pids.push(child.id());
                        assert!(child.wait().await.unwrap().success());
                    }
                    pids
                })
            })
            .collect();
        let mut pids = Vec::new();
        for t in tasks {
            pids.extend(t.await.unwrap());
        }
        assert_eq!(pids.len(), 2000);
        let left: Vec<i32> = pids.into_iter().filter(|p| child_state(*p).is_some_and(|(s, _)| s == 'Z')).collect();
        assert!(left.is_empty(), "zombies: {left:?}");
    }

    #[tokio::test]
    async fn waiting_without_a_pidfd_and_dropping_unwaited_both_reap() {
        // Kernels before 5.2 give no pidfd: waiting falls back to a blocking waitpid.
        let argv = args(&["sh", "-c", "exit 5"]);
        let mut child = spawn(&SpawnSpec::new(c"/bin/sh", &argv, &[])).unwrap();
        child.pidfd = None;
        assert_eq!(child.wait().await.unwrap().code(), Some(5));

        let argv = args(&["sleep", "0.2"]);
        let child = spawn(&SpawnSpec::new(c"/bin/sleep", &argv, &[])).unwrap();
        let pid = child.id();
        drop(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while child_state(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "dropped child {pid} never reaped: {:?}", child_state(pid));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
