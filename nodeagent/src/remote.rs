//! `mpirun` inside an allocation: hostfiles and `launcher exec`.
//!
//! Every job attempt's tasks find, through their environment:
//! * `LAUNCHER_HOSTFILE` (Open MPI format, `node slots=N`) and
//!   `LAUNCHER_HOSTFILE_MPICH` (hydra's `node:N`). The files live in
//!   `<state>/jobs/hostfiles/`, named by a hash of their content and shared by
//!   every attempt with the same node list and slots, so starting a job writes
//!   nothing when another job of its shape ran here before;
//! * `LAUNCHER_RSH`, a two-line script that runs `launcher exec "$@"`, one per
//!   agent, for MPI launchers that want one executable as their ssh
//!   (`mpiexec.hydra -launcher ssh -launcher-exec $LAUNCHER_RSH`,
//!   `mpirun --mca plm_rsh_agent $LAUNCHER_RSH`);
//! * `LAUNCHER_EXEC_SOCK`, the agent's one Unix socket for `launcher exec`, and
//!   `LAUNCHER_EXEC_TOKEN`, 128 random bits that name the attempt. A request
//!   with a token the agent did not hand out (or whose attempt has ended) is
//!   refused, so a process outside the job cannot run commands in it.
//!
//! `launcher exec NODE CMD...` connects to that socket and sends one
//! [`ExecRequest`]. The agent relays it to the controller
//! ([`FromAgent::ExecStart`]), which checks that NODE belongs to the caller's
//! job and forwards it to NODE's agent ([`ToAgent::Exec`]). That agent runs the
//! command as the job's user in the job's environment, and its output and exit
//! come back the same way ([`FromAgent::ExecOutput`], [`FromAgent::ExecExited`])
//! to the socket, where the client writes them out and exits with the code. When
//! the client goes away, the agent sends [`FromAgent::ExecKill`] and the command
//! is killed; commands still running when the job ends die with it.

use crate::exec::{JobTable, NodeFacts};
use launcher_proto::{ExecMsg, ExitStatus, FromAgent, JobId, LaunchMsg, NodeId, Stream, ToAgent};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// The agent's `launcher exec` socket, under `<state>/jobs/`.
pub const EXEC_SOCK: &str = "exec.sock";
/// The ssh-like wrapper script, under `<state>/jobs/`.
pub const RSH: &str = "rsh";
/// Hostfiles that no running attempt uses are deleted once there are more than this many.
const HOSTFILES_KEPT: usize = 64;

/// What `launcher exec` sends to its local agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The calling job's `LAUNCHER_EXEC_TOKEN`.
    pub token: String,
    /// Target node name.
    pub node: String,
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Join `argv` with spaces and run it with `/bin/sh -c` (ssh-style).
    pub shell: bool,
    /// Working directory (empty: the job's).
    pub cwd: String,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

/// What the agent streams back to `launcher exec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExecEvent {
    /// Output of the remote command.
    Output {
        /// Which stream.
        stream: Stream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// It ended (or never started; `LaunchFailed` says why).
    Exit(ExitStatus),
}

/// Requests this agent relayed for its local callers, by id.
pub type Pending = Arc<Mutex<HashMap<u64, UnboundedSender<ExecEvent>>>>;

/// The agent-wide half of `mpirun` support: the socket, the `rsh` script, the
/// shared hostfiles and the tokens of the attempts held here.
#[derive(Debug, Clone, Default)]
pub struct Remote {
    /// `<state>/jobs`, where the socket, the script and `hostfiles/` live.
    dir: PathBuf,
    inner: Arc<Mutex<RemoteState>>,
}

#[derive(Debug, Default)]
struct RemoteState {
    /// Token → attempt.
    tokens: HashMap<String, (JobId, u32)>,
    /// Hostfile content hash → (attempts using it, the Open MPI content).
    hostfiles: HashMap<u64, (usize, String)>,
}

/// Per-attempt facts for running `launcher exec` commands here.
#[derive(Debug, Clone)]
pub struct JobExec {
    account: Option<crate::users::Account>,
    cwd: PathBuf,
    /// The launch, for the environment of commands run here (built on first use).
    msg: Arc<LaunchMsg>,
    /// Its `LAUNCHER_EXEC_TOKEN`.
    token: String,
    /// Its hostfiles' content hash.
    hostfile: u64,
    /// Process groups of commands run here for callers: (origin, id) → pgid.
    children: Arc<Mutex<HashMap<(NodeId, u64), i32>>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn hostfiles(msg: &LaunchMsg) -> (String, String) {
    let mut ompi = String::new();
    let mut mpich = String::new();
    for (name, tasks) in msg.nodelist.iter().zip(&msg.tasks_per_node) {
        let slots = tasks.saturating_mul(msg.spec.cpus_per_task.max(1));
        ompi += &format!("{name} slots={slots}\n");
        mpich += &format!("{name}:{slots}\n");
    }
    (ompi, mpich)
}

/// 64-bit FNV-1a: stable across runs, for hostfile names (and cheap, for
/// the index of a task's environment in exec.rs).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

impl Remote {
    /// Open the agent's `launcher exec` socket and write its `rsh` script under
    /// `jobs_dir`; serve the socket until the agent exits.
    pub fn start(jobs_dir: &Path, pending: Pending, out: UnboundedSender<FromAgent>) -> std::io::Result<Remote> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(jobs_dir.join("hostfiles"))?;
        for d in [jobs_dir.to_path_buf(), jobs_dir.join("hostfiles")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o711))?;
        }
        let exe = std::env::current_exe()?;
        let rsh = jobs_dir.join(RSH);
        std::fs::write(&rsh, format!("#!/bin/sh\nexec '{}' exec \"$@\"\n", exe.display()))?;
        std::fs::set_permissions(&rsh, std::fs::Permissions::from_mode(0o755))?;
        let sock_path = jobs_dir.join(EXEC_SOCK);
        let _ = std::fs::remove_file(&sock_path);
        let std_listener = std::os::unix::net::UnixListener::bind(&sock_path)?;
        // Every job's user connects here; the token, not the socket's mode, is the check.
        std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o666))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(std_listener)?;
        let remote = Remote { dir: jobs_dir.to_path_buf(), inner: Default::default() };
        let r = remote.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_client(s, r.clone(), out.clone(), pending.clone()));
            }
        });
        Ok(remote)
    }

    fn hostfile_paths(&self, hash: u64) -> (PathBuf, PathBuf) {
        let d = self.dir.join("hostfiles");
        (d.join(format!("{hash:016x}")), d.join(format!("{hash:016x}.mpich")))
    }

    /// Take a reference on the hostfiles of `msg`, writing them if no held attempt has them.
    fn hold_hostfiles(&self, msg: &LaunchMsg) -> std::io::Result<u64> {
        let (ompi, mpich) = hostfiles(msg);
        let mut hash = fnv1a(ompi.as_bytes());
        let mut st = self.inner.lock().expect("remote lock");
        // A hash collision (never seen; 64 bits) moves to the next free name.
        while st.hostfiles.get(&hash).is_some_and(|(_, c)| *c != ompi) {
            hash = hash.wrapping_add(1);
        }
        match st.hostfiles.get_mut(&hash) {
            Some((n, _)) => *n += 1,
            None => {
                let (p_ompi, p_mpich) = self.hostfile_paths(hash);
                // Readers see the whole file or none: write aside, then rename.
                for (path, text) in [(&p_ompi, &ompi), (&p_mpich, &mpich)] {
                    let tmp = path.with_extension("tmp");
                    std::fs::write(&tmp, text)?;
                    std::fs::rename(&tmp, path)?;
                }
                st.hostfiles.insert(hash, (1, ompi));
            }
        }
        Ok(hash)
    }

    /// Drop an attempt's token and its reference on its hostfiles.
    fn release(&self, je: &JobExec) {
        let mut st = self.inner.lock().expect("remote lock");
        st.tokens.remove(&je.token);
        let unused = match st.hostfiles.get_mut(&je.hostfile) {
            Some((n, _)) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if unused && st.hostfiles.len() > HOSTFILES_KEPT {
            st.hostfiles.remove(&je.hostfile);
            let (a, b) = self.hostfile_paths(je.hostfile);
            let _ = std::fs::remove_file(a);
            let _ = std::fs::remove_file(b);
        }
    }

    fn attempt_of(&self, token: &str) -> Option<(JobId, u32)> {
        self.inner.lock().expect("remote lock").tokens.get(token).copied()
    }
}

fn new_token() -> std::io::Result<String> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).map_err(|_| std::io::Error::other("no random bytes from the OS"))?;
    Ok(crate::wire::hex(&b))
}

/// The `mpirun` environment of one attempt: hostfiles, `rsh`, socket and token.
pub fn task_vars(je: &JobExec, facts: &NodeFacts) -> [(&'static str, String); 5] {
    let r = &facts.remote;
    let (ompi, mpich) = r.hostfile_paths(je.hostfile);
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    [
        ("LAUNCHER_HOSTFILE", s(ompi)),
        ("LAUNCHER_HOSTFILE_MPICH", s(mpich)),
        ("LAUNCHER_EXEC_SOCK", s(r.dir.join(EXEC_SOCK))),
        ("LAUNCHER_EXEC_TOKEN", je.token.clone()),
        ("LAUNCHER_RSH", s(r.dir.join(RSH))),
    ]
}

/// Hold the hostfiles and hand out a token for this attempt; record what
/// remote commands of it need. Returns the attempt's `mpirun` facts.
pub fn prepare(
    msg: &Arc<LaunchMsg>,
    facts: &NodeFacts,
    account: Option<&crate::users::Account>,
    cwd: &Path,
) -> std::io::Result<JobExec> {
    if facts.remote.dir.as_os_str().is_empty() {
        return Err(std::io::Error::other("this agent has no launcher exec socket"));
    }
    let token = new_token()?;
    let hostfile = facts.remote.hold_hostfiles(msg)?;
    facts.remote.inner.lock().expect("remote lock").tokens.insert(token.clone(), (msg.job, msg.attempt));
    Ok(JobExec {
        account: account.cloned(),
        cwd: cwd.to_path_buf(),
        msg: msg.clone(),
        token,
        hostfile,
        children: Default::default(),
    })
}

/// The environment of a command run for `launcher exec`: the job's, as its
/// first local task has it, without the per-rank variables.
fn exec_env(je: &JobExec, facts: &NodeFacts) -> Vec<(String, String)> {
    let msg = &je.msg;
    let mut env = crate::exec::task_env(msg, facts, msg.tasks.first().map_or(0, |t| t.rank), 0);
    env.retain(|(k, _)| !matches!(k.as_str(), "RANK" | "LOCAL_RANK" | "SLURM_PROCID" | "SLURM_LOCALID"));
    env.retain(|(k, _)| !k.starts_with("LAUNCHER_RANK") && !k.starts_with("LAUNCHER_LOCAL_RANK"));
    env.extend(task_vars(je, facts).into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(a) = &je.account {
        env.extend([
            ("USER".into(), a.name.clone()),
            ("LOGNAME".into(), a.name.clone()),
            ("HOME".into(), a.home.clone()),
            ("SHELL".into(), a.shell.clone()),
        ]);
    }
    env
}

/// One `launcher exec` client on the socket.
async fn serve_client(s: tokio::net::UnixStream, remote: Remote, out: UnboundedSender<FromAgent>, pending: Pending) {
    let (mut r, mut w) = s.into_split();
    let mut dec = launcher_proto::FrameDecoder::new();
    let mut buf = vec![0u8; 16 * 1024];
    let req: ExecRequest = loop {
        match dec.next_frame() {
            Ok(Some(f)) => match launcher_proto::decode(&f) {
                Ok(r) => break r,
                Err(_) => return,
            },
            Ok(None) => {}
            Err(_) => return,
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => dec.extend(&buf[..n]),
        }
    };
    let Some((job, attempt)) = remote.attempt_of(&req.token) else {
        let why = "launcher exec: no running job on this node has this LAUNCHER_EXEC_TOKEN (has the job ended?)";
        let ev = ExecEvent::Exit(ExitStatus::LaunchFailed(why.into()));
        let _ = w.write_all(&launcher_proto::encode_frame(&ev)).await;
        return;
    };
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = unbounded_channel();
    pending.lock().expect("exec pending lock").insert(id, tx);
    let node = req.node.clone();
    let _ = out.send(FromAgent::ExecStart {
        id,
        job,
        attempt,
        node: req.node,
        argv: req.argv,
        shell: req.shell,
        cwd: req.cwd,
        env: req.env,
    });
    let mut done = false;
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let end = matches!(ev, ExecEvent::Exit(_));
                if w.write_all(&launcher_proto::encode_frame(&ev)).await.is_err() {
                    break;
                }
                if end {
                    done = true;
                    break;
                }
            }
            n = r.read(&mut buf) => {
                if matches!(n, Ok(0) | Err(_)) {
                    break; // the caller went away
                }
            }
        }
    }
    pending.lock().expect("exec pending lock").remove(&id);
    if !done {
        let _ = out.send(FromAgent::ExecKill { id, job, node });
    }
}

/// Deliver an answer for one of our callers.
pub fn deliver(pending: &Pending, id: u64, ev: ExecEvent) {
    if let Some(tx) = pending.lock().expect("exec pending lock").get(&id) {
        let _ = tx.send(ev);
    }
}

/// Run a command here for a caller on `m.origin`.
pub fn run(m: ExecMsg, table: &JobTable, out: &UnboundedSender<FromAgent>, facts: &NodeFacts) {
    let node_name = &facts.name;
    let (origin, id) = (m.origin, m.id);
    let fail = |e: String| {
        let _ = out.send(FromAgent::ExecExited { origin, id, status: ExitStatus::LaunchFailed(e) });
    };
    let je = table.lock().expect("job table lock").get(&(m.job, m.attempt)).and_then(|r| r.exec.clone());
    let Some(je) = je else {
        return fail(format!("job {} has no tasks on node {node_name} (any more)", m.job));
    };
    let (prog, args): (String, Vec<String>) = if m.shell {
        ("/bin/sh".into(), vec!["-c".into(), m.argv.join(" ")])
    } else {
        match m.argv.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => return fail("nothing to run".into()),
        }
    };
    // The caller's directory when it exists here too, else the job's.
    let cwd = Some(PathBuf::from(&m.cwd)).filter(|p| !m.cwd.is_empty() && p.is_dir()).unwrap_or_else(|| je.cwd.clone());
    // Started the way tasks are (exec::start_task): own process group, the
    // job's account and directory, killed with the agent.
    let mut env = crate::exec::Env::inherited();
    env.extend(exec_env(&je, facts));
    env.extend(m.env.iter().cloned());
    let creds = je.account.as_ref().map(|a| crate::spawn::Creds { uid: a.uid, gid: a.gid, groups: a.groups.clone() });
    let (child, stdout, stderr) =
        match crate::exec::start_task(Path::new(&prog), &args, env, &cwd, creds.as_ref(), None, None, None) {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot start {prog} on node {node_name}: {e}")),
        };
    je.children.lock().expect("exec children lock").insert((origin, id), child.id());
    let out = out.clone();
    tokio::spawn(async move {
        let pump = |mut r: tokio::net::unix::pipe::Receiver, stream: Stream| {
            let out = out.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = out.send(FromAgent::ExecOutput { origin, id, stream, data: buf[..n].to_vec() });
                }
            })
        };
        let so = pump(stdout, Stream::Stdout);
        let se = pump(stderr, Stream::Stderr);
        let status = child.wait().await;
        crate::exec::drain_pumps([so, se]).await;
        je.children.lock().expect("exec children lock").remove(&(origin, id));
        let status = crate::exec::exit_status(status, "command");
        let _ = out.send(FromAgent::ExecExited { origin, id, status });
    });
}

fn signal_later(pg: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group we created.
    unsafe {
        libc::kill(-pg, libc::SIGTERM);
    }
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        // SAFETY: as above.
        unsafe {
            libc::kill(-pg, libc::SIGKILL);
        }
    });
}

/// The caller of (`origin`, `id`) went away: stop its command.
pub fn kill_one(table: &JobTable, origin: NodeId, id: u64) {
    let t = table.lock().expect("job table lock");
    for run in t.values() {
        if let Some(pg) =
            run.exec.as_ref().and_then(|e| e.children.lock().expect("exec children lock").remove(&(origin, id)))
        {
            signal_later(pg);
        }
    }
}

/// Stop every command run here for an attempt (the job is being killed).
pub fn kill_job(table: &JobTable, job: JobId, attempt: u32) {
    if let Some(run) = table.lock().expect("job table lock").get(&(job, attempt)) {
        kill_run(run);
    }
}

/// Stop every command run here for this attempt.
pub fn kill_run(run: &crate::exec::JobRun) {
    let Some(e) = &run.exec else { return };
    for (_, pg) in e.children.lock().expect("exec children lock").drain() {
        signal_later(pg);
    }
}

/// The attempt is gone: stop its commands, retire its token, drop its hold on its hostfiles.
pub fn forget_run(run: &crate::exec::JobRun, facts: &NodeFacts) {
    kill_run(run);
    if let Some(e) = &run.exec {
        facts.remote.release(e);
    }
}

/// Dispatch the controller's exec messages.
pub fn on_message(msg: ToAgent, facts: &NodeFacts, table: &JobTable, out: &UnboundedSender<FromAgent>) {
    match msg {
        ToAgent::Exec(m) => run(*m, table, out, facts),
        ToAgent::ExecOutput { id, stream, data } => deliver(&facts.exec, id, ExecEvent::Output { stream, data }),
        ToAgent::ExecExited { id, status } => deliver(&facts.exec, id, ExecEvent::Exit(status)),
        ToAgent::ExecKill { origin, id } => kill_one(table, origin, id),
        _ => {}
    }
}

/// Parse `launcher exec` arguments: `--node NAME [--] CMD...` runs CMD directly;
/// the ssh-like `[-x ...] NAME CMD...` (what hydra and Open MPI's rsh launcher
/// pass) runs the words joined by spaces through `/bin/sh -c`, as ssh does.
pub fn parse_args(args: &[String]) -> Result<ExecRequest, String> {
    let usage = "usage: launcher exec --node NAME -- CMD [ARGS...]   or   launcher exec NAME CMD [ARGS...]";
    let mut i = 0;
    let mut node = None;
    // ssh options that take a value (so `-p 22 host cmd` skips the 22).
    const WITH_VALUE: &str = "bcDEeFIiJLlmOopQRSWw";
    while i < args.len() {
        let a = &args[i];
        if let Some(v) = a.strip_prefix("--node=") {
            node = Some(v.to_string());
            i += 1;
        } else if a == "--node" {
            node = Some(args.get(i + 1).ok_or(format!("--node needs a node name; {usage}"))?.clone());
            i += 2;
        } else if a == "--" {
            i += 1;
            break;
        } else if a.starts_with('-') && a.len() > 1 {
            let last = a.chars().last().unwrap_or('-');
            i += if a.len() == 2 && WITH_VALUE.contains(last) { 2 } else { 1 };
        } else {
            break;
        }
    }
    let rest = &args[i.min(args.len())..];
    let (node, argv, shell) = match node {
        Some(n) => (n, rest.to_vec(), false),
        None => match rest.split_first() {
            Some((n, cmd)) => (n.clone(), cmd.to_vec(), true),
            None => return Err(format!("no node given; {usage}")),
        },
    };
    if argv.is_empty() {
        return Err(format!("no command to run on {node}; {usage}"));
    }
    let cwd = std::env::current_dir().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    Ok(ExecRequest { token: String::new(), node, argv, shell, cwd, env: Vec::new() })
}

/// `launcher exec`: run a command on a node of the caller's own job, streaming
/// its output; returns its exit code (255 if it could not run, like ssh).
pub async fn client(args: &[String]) -> anyhow::Result<i32> {
    use anyhow::{anyhow, Context};
    let mut req = parse_args(args).map_err(|e| anyhow!(e))?;
    let sock = std::env::var_os("LAUNCHER_EXEC_SOCK").ok_or_else(|| {
        anyhow!("launcher exec runs commands on the nodes of the job it is called from, but LAUNCHER_EXEC_SOCK is not set: call it from inside a job (e.g. as mpirun's rsh agent in a job script)")
    })?;
    req.token = std::env::var("LAUNCHER_EXEC_TOKEN").map_err(|_| {
        anyhow!("launcher exec: LAUNCHER_EXEC_TOKEN is not set (it names the job): call it from inside a job, with the environment the job was given")
    })?;
    if !std::path::Path::new(&req.cwd).is_dir() {
        req.cwd.clear();
    }
    let s = tokio::net::UnixStream::connect(&sock)
        .await
        .with_context(|| format!("cannot reach the node agent at {} (has the job ended?)", sock.to_string_lossy()))?;
    let (mut r, mut w) = s.into_split();
    w.write_all(&launcher_proto::encode_frame(&req)).await?;
    let mut dec = launcher_proto::FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    use std::io::Write;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    loop {
        while let Some(f) = dec.next_frame()? {
            match launcher_proto::decode::<ExecEvent>(&f)? {
                ExecEvent::Output { stream: Stream::Stdout, data } => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                ExecEvent::Output { stream: Stream::Stderr, data } => {
                    stderr.write_all(&data)?;
                    stderr.flush()?;
                }
                ExecEvent::Exit(ExitStatus::LaunchFailed(e)) => {
                    eprintln!("launcher exec: {e}");
                    return Ok(255);
                }
                ExecEvent::Exit(st) => return Ok(st.code()),
            }
        }
        let n = r.read(&mut buf).await?;
        if n == 0 {
            anyhow::bail!("the node agent closed the connection before the command ended (agent restarted?)");
        }
        dec.extend(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn exec_argument_forms() {
        let r = parse_args(&v(&["--node", "node2", "--", "hostname", "-f"])).unwrap();
        assert_eq!((r.node.as_str(), r.argv, r.shell), ("node2", v(&["hostname", "-f"]), false));
        let r = parse_args(&v(&["--node=node2", "true"])).unwrap();
        assert_eq!((r.node.as_str(), r.shell), ("node2", false));
        // hydra: `-x HOST "PROXY" ARGS...`
        let r = parse_args(&v(&["-x", "node2", "\"/usr/bin/hydra_pmi_proxy\"", "--control-port", "a:1"])).unwrap();
        assert_eq!((r.node.as_str(), r.shell), ("node2", true));
        assert_eq!(r.argv[0], "\"/usr/bin/hydra_pmi_proxy\"");
        // ssh options with values are skipped with their value.
        let r = parse_args(&v(&["-p", "22", "-o", "BatchMode=yes", "node1", "orted", "-mca", "x", "y"])).unwrap();
        assert_eq!((r.node.as_str(), r.argv.len()), ("node1", 4));
        assert!(parse_args(&v(&["node1"])).unwrap_err().contains("no command"));
        assert!(parse_args(&v(&[])).unwrap_err().contains("no node"));
        assert!(parse_args(&v(&["--node"])).unwrap_err().contains("--node needs"));
    }

    #[test]
    fn hostfiles_in_both_formats() {
        let msg = LaunchMsg {
            job: JobId(3),
            attempt: 1,
            spec: launcher_proto::JobSpec { nodes: 2, tasks: 3, cpus_per_task: 2, ..Default::default() },
            node_rank: 0,
            nodelist: vec!["node1".into(), "node2".into()],
            node_addrs: vec![],
            tasks_per_node: vec![2, 1],
            tasks: vec![],
            array: None,
        };
        let (o, m) = hostfiles(&msg);
        assert_eq!(o, "node1 slots=4\nnode2 slots=2\n");
        assert_eq!(m, "node1:4\nnode2:2\n");
    }

    fn launch_on(nodes: &[&str], job: u64) -> Arc<LaunchMsg> {
        Arc::new(LaunchMsg {
            job: JobId(job),
            attempt: 1,
            spec: launcher_proto::JobSpec { nodes: nodes.len() as u32, tasks: 1, ..Default::default() },
            node_rank: 0,
            nodelist: nodes.iter().map(|n| n.to_string()).collect(),
            node_addrs: vec![],
            tasks_per_node: vec![1; nodes.len()],
            tasks: vec![],
            array: None,
        })
    }

    #[tokio::test]
    async fn hostfiles_are_shared_by_content_tokens_name_attempts() {
        let d = tempfile::tempdir().unwrap();
        let jobs = d.path().join("jobs");
        let (out, _rx) = unbounded_channel();
        let remote = Remote::start(&jobs, Pending::default(), out).unwrap();
        let facts = NodeFacts {
            name: "n1".into(),
            state_dir: d.path().into(),
            users: crate::users::Policy::RunAsSelf,
            pmi: Default::default(),
            exec: Default::default(),
            topo: Default::default(),
            cpusets: None,
            remote,
        };
        let a = prepare(&launch_on(&["n1"], 1), &facts, None, Path::new("/")).unwrap();
        let b = prepare(&launch_on(&["n1"], 2), &facts, None, Path::new("/")).unwrap();
        let c = prepare(&launch_on(&["n1", "n2"], 3), &facts, None, Path::new("/")).unwrap();
        let vars = |je: &JobExec| task_vars(je, &facts).into_iter().collect::<HashMap<_, _>>();
        let (va, vb, vc) = (vars(&a), vars(&b), vars(&c));
        // Same shape, same files; another shape, other files.
        assert_eq!(va["LAUNCHER_HOSTFILE"], vb["LAUNCHER_HOSTFILE"]);
        assert_ne!(va["LAUNCHER_HOSTFILE"], vc["LAUNCHER_HOSTFILE"]);
        assert_eq!(std::fs::read_to_string(&vc["LAUNCHER_HOSTFILE"]).unwrap(), "n1 slots=1\nn2 slots=1\n");
        assert_eq!(std::fs::read_to_string(&vc["LAUNCHER_HOSTFILE_MPICH"]).unwrap(), "n1:1\nn2:1\n");
        assert!(std::fs::read_to_string(&va["LAUNCHER_RSH"]).unwrap().contains("exec \"$@\""));
        // Tokens differ per attempt and name it until it is forgotten.
        assert_ne!(va["LAUNCHER_EXEC_TOKEN"], vb["LAUNCHER_EXEC_TOKEN"]);
        assert_eq!(va["LAUNCHER_EXEC_TOKEN"].len(), 32);
        assert_eq!(facts.remote.attempt_of(&va["LAUNCHER_EXEC_TOKEN"]), Some((JobId(1), 1)));
        facts.remote.release(&a);
        assert_eq!(facts.remote.attempt_of(&va["LAUNCHER_EXEC_TOKEN"]), None);
        assert_eq!(facts.remote.attempt_of(&vb["LAUNCHER_EXEC_TOKEN"]), Some((JobId(2), 1)));
        // Few hostfiles: an unused one stays for the next job of its shape.
        facts.remote.release(&b);
        facts.remote.release(&c);
        assert!(Path::new(&va["LAUNCHER_HOSTFILE"]).exists());
        // Many: unused ones are deleted.
        let many: Vec<JobExec> = (0..HOSTFILES_KEPT as u64 + 2)
            .map(|i| prepare(&launch_on(&[&format!("x{i}")], 10 + i), &facts, None, Path::new("/")).unwrap())
            .collect();
        let first = vars(&many[0])["LAUNCHER_HOSTFILE"].clone();
        for je in &many {
            facts.remote.release(je);
        }
        assert!(!Path::new(&first).exists(), "unused hostfile kept past the limit");
        // An unknown token gets a clear refusal on the socket.
        let s = tokio::net::UnixStream::connect(jobs.join(EXEC_SOCK)).await.unwrap();
        let (mut r, mut w) = s.into_split();
        let req = ExecRequest {
            token: "00".repeat(16),
            node: "n1".into(),
            argv: vec!["true".into()],
            shell: false,
            cwd: String::new(),
            env: vec![],
        };
        w.write_all(&launcher_proto::encode_frame(&req)).await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        let mut dec = launcher_proto::FrameDecoder::new();
        dec.extend(&got);
        let ev: ExecEvent = launcher_proto::decode(&dec.next_frame().unwrap().unwrap()).unwrap();
        match ev {
            ExecEvent::Exit(ExitStatus::LaunchFailed(why)) => assert!(why.contains("LAUNCHER_EXEC_TOKEN"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
