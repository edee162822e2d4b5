//! The I/O edge of the PMI engine: one job attempt's ranks on this node.
//!
//! Each local rank gets one end of a Unix socketpair as `PMI_FD`; this task
//! reads request lines from the other ends, feeds them to the [`Engine`], and
//! applies its effects: replies go back to the rank, a fence goes to the
//! controller (or straight back into the engine when the job has one node),
//! and `abort` ends the job everywhere. Fences not yet answered are kept in
//! the route table so the agent can resend them after reconnecting.

use super::engine::{Effect, Engine};
use crate::exec::JobTable;
use launcher_proto::{FromAgent, JobId};
use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Merged fence results from the controller: (seq, puts).
pub type FenceResult = (u64, Vec<(String, String)>);

/// A running PMI step's mailbox and its unanswered fence.
#[derive(Debug)]
pub struct Route {
    tx: UnboundedSender<FenceResult>,
    pending: Option<FromAgent>,
}

/// Every PMI step on this node, by (job, attempt).
pub type Routes = Arc<Mutex<HashMap<(JobId, u32), Route>>>;

/// Deliver the controller's `FenceDone`.
pub fn deliver(routes: &Routes, job: JobId, attempt: u32, seq: u64, puts: Vec<(String, String)>) {
    if let Some(r) = routes.lock().expect("pmi routes lock").get(&(job, attempt)) {
        let _ = r.tx.send((seq, puts));
    }
}

/// Fences still waiting for an answer (to resend after a reconnect).
pub fn pending(routes: &Routes) -> Vec<FromAgent> {
    routes.lock().expect("pmi routes lock").values().filter_map(|r| r.pending.clone()).collect()
}

/// One rank's socketpair: (rank, the task's end, our end).
pub type Pair = (u32, OwnedFd, UnixStream);

/// Socketpairs for the given ranks.
pub fn socketpairs(ranks: &[u32]) -> std::io::Result<Vec<Pair>> {
    ranks
        .iter()
        .map(|&r| {
            let (ours, theirs) = UnixStream::pair()?;
            Ok((r, OwnedFd::from(theirs), ours))
        })
        .collect()
}

/// Where the step's effects go.
pub struct StepCtx {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: u32,
    /// The job spans only this node: fences need no controller.
    pub single_node: bool,
    /// Messages to the controller.
    pub out: UnboundedSender<FromAgent>,
    /// Route table.
    pub routes: Routes,
    /// Tasks, to kill on abort.
    pub table: JobTable,
}

/// A TCP listener for `PMI_PORT` on this node's address (`host`, or loopback
/// when the node has none), and the `host:port` value for the ranks.
pub fn port_listener(host: &str) -> std::io::Result<(std::net::TcpListener, String)> {
    let ip: std::net::IpAddr = host.parse().unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    let l = std::net::TcpListener::bind((ip, 0))?;
    l.set_nonblocking(true)?;
    let port = l.local_addr()?.port();
    Ok((l, format!("{ip}:{port}")))
}

/// One client connection: a rank's `PMI_FD` socket, or a `PMI_PORT` TCP connection.
struct Conn {
    /// The rank, known up front for `PMI_FD` and after `cmd=initack` for `PMI_PORT`.
    rank: Option<u32>,
    /// Whether the connection carried a PMI line.
    talked: bool,
    writer: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
}

fn read_lines(
    id: usize,
    r: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    tx: UnboundedSender<(usize, Option<String>)>,
) {
    tokio::spawn(async move {
        let mut r = tokio::io::BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let _ = tx.send((id, Some(String::from_utf8_lossy(&buf).into_owned())));
                }
            }
        }
        let _ = tx.send((id, None));
    });
}

fn set_progress(table: &JobTable, job: JobId, attempt: u32, rank: u32, p: crate::exec::PmiProgress) {
    if let Some(t) = table.lock().expect("job table lock").get_mut(&(job, attempt)).and_then(|j| j.tasks.get_mut(&rank))
    {
        if t.pmi != crate::exec::PmiProgress::Finalized {
            t.pmi = p;
        }
    }
}

/// Whether every local task of the step has exited (or the step is gone).
fn all_exited(table: &JobTable, job: JobId, attempt: u32) -> bool {
    table
        .lock()
        .expect("job table lock")
        .get(&(job, attempt))
        .is_none_or(|j| j.tasks.values().all(|t| t.exit.is_some()))
}

/// Serve PMI to `conns` (and to `PMI_PORT` connections on `listener`) until
/// every connection has closed and, when a listener is open, every local task
/// has exited.
///
/// A `PMI_FD` socket that closes without ever carrying a line is not a dead
/// rank: a wrapper closed its copy, and the rank may still connect through
/// `PMI_PORT` (`cmd=initack pmiid=<rank>`).
pub fn spawn(mut engine: Engine, conns: Vec<(u32, UnixStream)>, listener: Option<std::net::TcpListener>, ctx: StepCtx) {
    let (fence_tx, mut fence_rx) = unbounded_channel::<FenceResult>();
    ctx.routes.lock().expect("pmi routes lock").insert((ctx.job, ctx.attempt), Route { tx: fence_tx, pending: None });
    tokio::spawn(async move {
        let listener = listener.and_then(|l| match tokio::net::TcpListener::from_std(l) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(job = %ctx.job, "PMI_PORT listener unusable: {e}");
                None
            }
        });
        let (line_tx, mut line_rx) = unbounded_channel::<(usize, Option<String>)>();
        let mut open: HashMap<usize, Conn> = HashMap::new();
        let mut by_rank: HashMap<u32, usize> = HashMap::new();
        let mut next_id = 0usize;
        for (rank, s) in conns {
            let s = match s.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(job = %ctx.job, rank, "PMI socket unusable: {e}");
                    continue;
                }
            };
            let (r, w) = s.into_split();
            open.insert(next_id, Conn { rank: Some(rank), talked: false, writer: Box::new(w) });
            by_rank.insert(rank, next_id);
            read_lines(next_id, r, line_tx.clone());
            next_id += 1;
        }
        let mut seq = 0u64;
        let mut work: VecDeque<Effect> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            if open.is_empty() && (listener.is_none() || all_exited(&ctx.table, ctx.job, ctx.attempt)) {
                break;
            }
            tokio::select! {
                msg = line_rx.recv() => match msg {
                    Some((id, Some(line))) => {
                        let Some(conn) = open.get_mut(&id) else { continue };
                        conn.talked = true;
                        match conn.rank {
                            Some(rank) => {
                                set_progress(&ctx.table, ctx.job, ctx.attempt, rank, crate::exec::PmiProgress::Started);
                                work.extend(engine.on_line(rank, &line));
                            }
                            None => match engine.on_initack(&line) {
                                Ok((rank, fx)) => {
                                    conn.rank = Some(rank);
                                    by_rank.insert(rank, id);
                                    set_progress(&ctx.table, ctx.job, ctx.attempt, rank, crate::exec::PmiProgress::Started);
                                    work.extend(fx);
                                }
                                Err(e) => {
                                    tracing::warn!(job = %ctx.job, "PMI_PORT connection refused: {e}");
                                    open.remove(&id);
                                }
                            },
                        }
                    }
                    Some((id, None)) => {
                        if let Some(conn) = open.remove(&id) {
                            if let Some(rank) = conn.rank {
                                if conn.talked && by_rank.get(&rank) == Some(&id) {
                                    engine.on_disconnect(rank);
                                }
                            }
                        }
                    }
                    None => break,
                },
                Some((s, puts)) = fence_rx.recv() => {
                    if s != seq {
                        continue; // a duplicate answer to an older fence
                    }
                    if let Some(r) = ctx.routes.lock().expect("pmi routes lock").get_mut(&(ctx.job, ctx.attempt)) {
                        r.pending = None;
                    }
                    match engine.on_fence_done(puts) {
                        Ok(fx) => work.extend(fx),
                        Err(e) => tracing::warn!(job = %ctx.job, "PMI fence result: {e}"),
                    }
                }
                accepted = async {
                    match &listener {
                        Some(l) => l.accept().await,
                        None => std::future::pending().await,
                    }
                } => match accepted {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        open.insert(next_id, Conn { rank: None, talked: false, writer: Box::new(w) });
                        read_lines(next_id, r, line_tx.clone());
                        next_id += 1;
                    }
                    Err(e) => tracing::warn!(job = %ctx.job, "PMI_PORT accept: {e}"),
                },
                _ = tick.tick() => {}
            }
            // A finalized rank may exit as soon as it reads finalize_ack: record it first.
            for e in &work {
                if let Effect::Finalized { rank } = e {
                    set_progress(&ctx.table, ctx.job, ctx.attempt, *rank, crate::exec::PmiProgress::Finalized);
                }
            }
            let mut finalized = Vec::new();
            while let Some(effect) = work.pop_front() {
                match effect {
                    Effect::Reply { rank, line } => {
                        if let Some(w) = by_rank.get(&rank).and_then(|id| open.get_mut(id)) {
                            let _ = w.writer.write_all(line.as_bytes()).await;
                        }
                    }
                    Effect::FenceReady { puts } => {
                        seq += 1;
                        if ctx.single_node {
                            match engine.on_fence_done(puts) {
                                Ok(fx) => work.extend(fx),
                                Err(e) => tracing::warn!(job = %ctx.job, "PMI fence: {e}"),
                            }
                        } else {
                            let msg = FromAgent::Fence { job: ctx.job, attempt: ctx.attempt, seq, span: 1, puts };
                            if let Some(r) =
                                ctx.routes.lock().expect("pmi routes lock").get_mut(&(ctx.job, ctx.attempt))
                            {
                                r.pending = Some(msg.clone());
                            }
                            let _ = ctx.out.send(msg);
                        }
                    }
                    Effect::Abort { rank, exit_code, message } => {
                        tracing::info!(job = %ctx.job, rank, exit_code, "MPI_Abort: ending the job");
                        let _ = ctx.out.send(FromAgent::MpiAbort {
                            job: ctx.job,
                            attempt: ctx.attempt,
                            rank,
                            code: exit_code,
                            message,
                        });
                        // Do not wait for the controller's round trip to stop our own ranks.
                        crate::exec::kill(&ctx.table, ctx.job, ctx.attempt, Duration::from_secs(2));
                    }
                    Effect::Finalized { rank } => finalized.push(rank),
                    Effect::ProtocolError { rank, error } => {
                        tracing::warn!(job = %ctx.job, rank, "PMI protocol error: {error}");
                    }
                }
            }
            if !finalized.is_empty() {
                let _ = ctx.out.send(FromAgent::PmiFinalized { job: ctx.job, attempt: ctx.attempt, ranks: finalized });
            }
        }
        ctx.routes.lock().expect("pmi routes lock").remove(&(ctx.job, ctx.attempt));
    });
}
