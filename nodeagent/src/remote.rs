//! `mpirun` inside an allocation: hostfiles and `launcher exec`.
//!
//! Every job attempt gets, in its attempt directory on each node:
//! * `hostfile` (Open MPI format, `node slots=N`) and `hostfile.mpich`
//!   (hydra's `node:N`), named by `LAUNCHER_HOSTFILE` / `LAUNCHER_HOSTFILE_MPICH`;
//! * `rsh`, a two-line script that runs `launcher exec "$@"` (`LAUNCHER_RSH`),
//!   for MPI launchers that want one executable as their ssh
//!   (`mpiexec.hydra -launcher ssh -launcher-exec $LAUNCHER_RSH`,
//!   `mpirun --mca plm_rsh_agent $LAUNCHER_RSH`);
//! * `exec.sock`, a Unix socket owned by the job's user (`LAUNCHER_EXEC_SOCK`).
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
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Open MPI hostfile name in the attempt directory.
pub const HOSTFILE: &str = "hostfile";
/// MPICH (hydra) hostfile name in the attempt directory.
pub const HOSTFILE_MPICH: &str = "hostfile.mpich";
/// The `launcher exec` socket in the attempt directory.
pub const EXEC_SOCK: &str = "exec.sock";
/// The ssh-like wrapper script in the attempt directory.
pub const RSH: &str = "rsh";

/// What `launcher exec` sends to its local agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
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

/// Per-attempt facts for running `launcher exec` commands here.
#[derive(Debug, Clone)]
pub struct JobExec {
    account: Option<crate::users::Account>,
    cwd: PathBuf,
    env: Vec<(String, String)>,
    /// Process groups of commands run here for callers: (origin, id) → pgid.
    children: Arc<Mutex<HashMap<(NodeId, u64), i32>>>,
    /// The socket listener task.
    listener: Option<Arc<tokio::task::AbortHandle>>,
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

/// Write the hostfiles and the `rsh` wrapper, open the exec socket, and record
/// what remote commands of this attempt need.
pub fn prepare(
    msg: &LaunchMsg,
    facts: &NodeFacts,
    dir: &Path,
    account: Option<&crate::users::Account>,
    cwd: &Path,
    table: &JobTable,
    out: &UnboundedSender<FromAgent>,
) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let (ompi, mpich) = hostfiles(msg);
    std::fs::write(dir.join(HOSTFILE), ompi)?;
    std::fs::write(dir.join(HOSTFILE_MPICH), mpich)?;
    let exe = std::env::current_exe()?;
    let rsh = dir.join(RSH);
    std::fs::write(&rsh, format!("#!/bin/sh\nexec '{}' exec \"$@\"\n", exe.display()))?;
    for (p, mode) in [(dir.join(HOSTFILE), 0o644), (dir.join(HOSTFILE_MPICH), 0o644), (rsh, 0o755)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    }
    let sock_path = dir.join(EXEC_SOCK);
    let _ = std::fs::remove_file(&sock_path);
    let std_listener = std::os::unix::net::UnixListener::bind(&sock_path)?;
    std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600))?;
    if let Some(a) = account {
        std::os::unix::fs::chown(&sock_path, Some(a.uid), Some(a.gid))?;
    }
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(std_listener)?;
    let (job, attempt) = (msg.job, msg.attempt);
    let (out, pending) = (out.clone(), facts.exec.clone());
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_client(s, job, attempt, out.clone(), pending.clone()));
        }
    });
    let mut env = crate::exec::task_env(msg, facts, msg.tasks.first().map_or(0, |t| t.rank), 0);
    env.retain(|(k, _)| !matches!(k.as_str(), "RANK" | "LOCAL_RANK" | "SLURM_PROCID" | "SLURM_LOCALID"));
    env.retain(|(k, _)| !k.starts_with("LAUNCHER_RANK") && !k.starts_with("LAUNCHER_LOCAL_RANK"));
    env.push(("LAUNCHER_HOSTFILE".into(), dir.join(HOSTFILE).to_string_lossy().into_owned()));
    env.push(("LAUNCHER_HOSTFILE_MPICH".into(), dir.join(HOSTFILE_MPICH).to_string_lossy().into_owned()));
    env.push(("LAUNCHER_EXEC_SOCK".into(), sock_path.to_string_lossy().into_owned()));
    env.push(("LAUNCHER_RSH".into(), dir.join(RSH).to_string_lossy().into_owned()));
    if let Some(a) = account {
        env.extend([
            ("USER".into(), a.name.clone()),
            ("LOGNAME".into(), a.name.clone()),
            ("HOME".into(), a.home.clone()),
            ("SHELL".into(), a.shell.clone()),
        ]);
    }
    let je = JobExec {
        account: account.cloned(),
        cwd: cwd.to_path_buf(),
        env,
        children: Default::default(),
        listener: Some(Arc::new(task.abort_handle())),
    };
    if let Some(run) = table.lock().expect("job table lock").get_mut(&(job, attempt)) {
        run.exec = Some(je);
    }
    Ok(())
}

/// One `launcher exec` client on the socket.
async fn serve_client(
    s: tokio::net::UnixStream,
    job: JobId,
    attempt: u32,
    out: UnboundedSender<FromAgent>,
    pending: Pending,
) {
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
pub fn run(m: ExecMsg, table: &JobTable, out: &UnboundedSender<FromAgent>, node_name: &str) {
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
    let mut cmd = tokio::process::Command::new(&prog);
    cmd.args(&args)
        .envs(je.env.iter().cloned())
        .envs(m.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let creds = je.account.as_ref().map(|a| (a.uid, a.gid, a.groups.clone()));
    let cwd_c = std::ffi::CString::new(cwd.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: only async-signal-safe calls between fork and exec (as in exec::launch).
    unsafe {
        cmd.pre_exec(move || {
            crate::users::become_user_in_child(creds.as_ref(), &cwd_c)?;
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {prog} on node {node_name}: {e}")),
    };
    if let Some(pid) = child.id() {
        je.children.lock().expect("exec children lock").insert((origin, id), pid as i32);
    }
    let out = out.clone();
    tokio::spawn(async move {
        let pump = |r: Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>, stream: Stream| {
            let out = out.clone();
            tokio::spawn(async move {
                let Some(mut r) = r else { return };
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let _ = out.send(FromAgent::ExecOutput { origin, id, stream, data: buf[..n].to_vec() });
                }
            })
        };
        let so = pump(child.stdout.take().map(|s| Box::new(s) as _), Stream::Stdout);
        let se = pump(child.stderr.take().map(|s| Box::new(s) as _), Stream::Stderr);
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

/// Stop every command run here for this attempt, and close its socket.
pub fn kill_run(run: &crate::exec::JobRun) {
    let Some(e) = &run.exec else { return };
    for (_, pg) in e.children.lock().expect("exec children lock").drain() {
        signal_later(pg);
    }
    if let Some(l) = &e.listener {
        l.abort();
    }
}

/// Dispatch the controller's exec messages.
pub fn on_message(msg: ToAgent, facts: &NodeFacts, table: &JobTable, out: &UnboundedSender<FromAgent>) {
    match msg {
        ToAgent::Exec(m) => run(*m, table, out, &facts.name),
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
    Ok(ExecRequest { node, argv, shell, cwd, env: Vec::new() })
}

/// `launcher exec`: run a command on a node of the caller's own job, streaming
/// its output; returns its exit code (255 if it could not run, like ssh).
pub async fn client(args: &[String]) -> anyhow::Result<i32> {
    use anyhow::{anyhow, Context};
    let mut req = parse_args(args).map_err(|e| anyhow!(e))?;
    let sock = std::env::var_os("LAUNCHER_EXEC_SOCK").ok_or_else(|| {
        anyhow!("launcher exec runs commands on the nodes of the job it is called from, but LAUNCHER_EXEC_SOCK is not set: call it from inside a job (e.g. as mpirun's rsh agent in a job script)")
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
        };
        let (o, m) = hostfiles(&msg);
        assert_eq!(o, "node1 slots=4\nnode2 slots=2\n");
        assert_eq!(m, "node1:4\nnode2:2\n");
    }
}
