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

/// Serve PMI to `conns` until every rank has closed its end.
pub fn spawn(mut engine: Engine, conns: Vec<(u32, UnixStream)>, ctx: StepCtx) {
    let (fence_tx, mut fence_rx) = unbounded_channel::<FenceResult>();
    ctx.routes.lock().expect("pmi routes lock").insert((ctx.job, ctx.attempt), Route { tx: fence_tx, pending: None });
    tokio::spawn(async move {
        let (line_tx, mut line_rx) = unbounded_channel::<(u32, Option<String>)>();
        let mut writers = HashMap::new();
        let mut live = 0usize;
        for (rank, s) in conns {
            let s = match s.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(s)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(job = %ctx.job, rank, "PMI socket unusable: {e}");
                    continue;
                }
            };
            let (r, w) = s.into_split();
            writers.insert(rank, w);
            live += 1;
            let tx = line_tx.clone();
            tokio::spawn(async move {
                let mut r = tokio::io::BufReader::new(r);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match r.read_until(b'\n', &mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = tx.send((rank, Some(String::from_utf8_lossy(&buf).into_owned())));
                        }
                    }
                }
                let _ = tx.send((rank, None));
            });
        }
        drop(line_tx);
        let mut seq = 0u64;
        let mut work: VecDeque<Effect> = VecDeque::new();
        while live > 0 {
            tokio::select! {
                msg = line_rx.recv() => match msg {
                    Some((rank, Some(line))) => work.extend(engine.on_line(rank, &line)),
                    Some((rank, None)) => {
                        engine.on_disconnect(rank);
                        live -= 1;
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
            }
            while let Some(effect) = work.pop_front() {
                match effect {
                    Effect::Reply { rank, line } => {
                        if let Some(w) = writers.get_mut(&rank) {
                            let _ = w.write_all(line.as_bytes()).await;
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
                            let msg = FromAgent::Fence { job: ctx.job, attempt: ctx.attempt, seq, puts };
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
                    Effect::Finalized { .. } => {}
                    Effect::ProtocolError { rank, error } => {
                        tracing::warn!(job = %ctx.job, rank, "PMI protocol error: {error}");
                    }
                }
            }
        }
        ctx.routes.lock().expect("pmi routes lock").remove(&(ctx.job, ctx.attempt));
    });
}
