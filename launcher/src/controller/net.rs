//! The controller's QUIC endpoint.
//!
//! Every connection starts with the [`Hello`] handshake on its first stream.
//! The peer's identity comes from its certificate's fingerprint, looked up in
//! the table of certificates this cluster issued; the claimed role must match.
//! - Agents keep the first stream as their control stream. Output chunks are
//!   appended to `logs/<job>/<rank>.{out,err}` here, in arrival order, before
//!   any later message (such as that task's exit) is handed to the driver.
//! - Clients open one stream per [`Request`].
//! - Joining agents (no certificate) may send one [`JoinMsg`] and nothing else.
//!
//! A malformed frame is answered with an error and closes only that stream or
//! connection; the endpoint keeps serving.

use super::driver::{Identities, Input, JobEvent};
use super::store::CertIdentity;
use anyhow::{anyhow, Result};
use launcher_proto::{
    ErrorKind, ErrorMsg, FromAgent, HandshakeError, Hello, HelloReply, JobId, JoinMsg, JoinReply, Request, Response,
    Role, Stream, ToAgent, PROTOCOL_VERSION,
};
use nodeagent::wire::{fingerprint, FramedStream};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, oneshot};

/// Shared by every connection task.
pub struct Ctx {
    /// Driver inbox (std channel: sending never blocks).
    pub driver: Mutex<Sender<Input>>,
    /// Issued certificates.
    pub ids: Identities,
    /// Job change notifications.
    pub events: broadcast::Sender<JobEvent>,
    /// Where task output is kept.
    pub logs_dir: PathBuf,
    /// Cluster name.
    pub cluster: String,
    /// Which attempt's output each job's log directory holds (shared by every agent connection).
    pub output_attempts: Arc<Mutex<HashMap<JobId, u32>>>,
}

impl Ctx {
    fn send(&self, i: Input) -> Result<()> {
        self.driver.lock().expect("driver sender lock").send(i).map_err(|_| anyhow!("controller is shutting down"))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Input) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        rx.await.map_err(|_| anyhow!("controller is shutting down"))
    }
}

/// Accept connections until the endpoint closes.
pub async fn serve(ep: quinn::Endpoint, ctx: Arc<Ctx>) {
    while let Some(incoming) = ep.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = connection(conn, ctx).await {
                        tracing::debug!("connection ended: {e:#}");
                    }
                }
                Err(e) => tracing::info!("handshake failed: {e}"),
            }
        });
    }
}

fn peer_identity(conn: &quinn::Connection, ids: &Identities) -> Result<Option<CertIdentity>, String> {
    let Some(any) = conn.peer_identity() else { return Ok(None) };
    let Ok(chain) = any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>() else { return Ok(None) };
    let Some(leaf) = chain.first() else { return Ok(None) };
    let fp = fingerprint(leaf);
    match ids.read().expect("ids lock").get(&fp) {
        Some(id) => Ok(Some(id.clone())),
        None => Err("this certificate was signed by the cluster CA but is not (or no longer) valid here: it was revoked or belongs to a reset cluster; get a new credential".into()),
    }
}

async fn connection(conn: quinn::Connection, ctx: Arc<Ctx>) -> Result<()> {
    let ident = peer_identity(&conn, &ctx.ids);
    let (send, recv) = conn.accept_bi().await?;
    let mut s = FramedStream::new(send, recv);
    let hello: Hello = match tokio::time::timeout(Duration::from_secs(5), s.recv()).await {
        Ok(Ok(Some(h))) => h,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(e)) => {
            let _ = s
                .send(&HelloReply::Rejected(HandshakeError::Unauthenticated(format!(
                    "malformed handshake ({e}); is this a launcher client of the same release?"
                ))))
                .await;
            let _ = s.send.finish();
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Ok(());
        }
        Err(_) => return Ok(()),
    };
    if hello.version != PROTOCOL_VERSION {
        reject(&mut s, HandshakeError::VersionMismatch { ours: PROTOCOL_VERSION, theirs: hello.version }).await;
        return Ok(());
    }
    let ident = match (ident, hello.role) {
        (Err(why), _) => {
            reject(&mut s, HandshakeError::Unauthenticated(why)).await;
            return Ok(());
        }
        (Ok(None), Role::Join) => None,
        (Ok(None), role) => {
            reject(&mut s, HandshakeError::Unauthenticated(format!(
                "no client certificate presented for role {role}: use a credential file (--cred or LAUNCHER_CRED) or join with a token"
            )))
            .await;
            return Ok(());
        }
        (Ok(Some(id)), role) => {
            let ok = matches!((id.kind.as_str(), role), ("agent", Role::Agent) | ("user", Role::Client));
            if !ok {
                reject(
                    &mut s,
                    HandshakeError::RoleMismatch { cert_role: format!("{}/{}", id.kind, id.name), claimed: role },
                )
                .await;
                return Ok(());
            }
            Some(id)
        }
    };
    let identity = ident.as_ref().map(|i| format!("{}/{}", i.kind, i.name)).unwrap_or_else(|| "joining agent".into());
    s.send(&HelloReply::Welcome { version: PROTOCOL_VERSION, cluster: ctx.cluster.clone(), identity }).await?;
    match (hello.role, ident) {
        (Role::Join, _) => join(s, &ctx).await,
        (Role::Agent, Some(id)) => agent(conn, s, id, ctx).await,
        (Role::Client, Some(id)) => {
            let id = Arc::new(id);
            loop {
                let (send, recv) = match conn.accept_bi().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(client = %id.name, "client connection ended: {e}");
                        return Ok(());
                    }
                };
                let (ctx, id) = (ctx.clone(), id.clone());
                tokio::spawn(async move {
                    if let Err(e) = request(FramedStream::new(send, recv), &ctx, &id).await {
                        tracing::debug!("request stream: {e:#}");
                    }
                });
            }
        }
        _ => Ok(()),
    }
}

async fn reject(s: &mut FramedStream, e: HandshakeError) {
    tracing::info!("handshake refused: {e}");
    let _ = s.send(&HelloReply::Rejected(e)).await;
    let _ = s.send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.send.stopped()).await;
}

async fn join(mut s: FramedStream, ctx: &Ctx) -> Result<()> {
    let msg: JoinMsg = match s.recv().await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            s.send(&JoinReply::Rejected(format!("malformed join request: {e}"))).await?;
            return Ok(());
        }
    };
    let r = ctx
        .ask(|reply| Input::Join { token: msg.token, name: msg.name.clone(), public_key: msg.public_key, reply })
        .await?;
    let reply = match r {
        Ok((cert_pem, ca_pem)) => {
            tracing::info!(name = msg.name, "agent joined");
            JoinReply::Accepted { cert_pem, ca_pem }
        }
        Err(why) => {
            tracing::warn!(name = msg.name, "join refused: {why}");
            JoinReply::Rejected(why)
        }
    };
    s.send(&reply).await?;
    let _ = s.send.finish();
    let _ = s.send.stopped().await;
    Ok(())
}

/// Appends task output to per-rank files, keeping them open while a task
/// runs. Chunks carry their offset in the stream: bytes we already have (a
/// resend after a reconnect) are skipped, so each byte is stored once.
struct OutputSink {
    dir: PathBuf,
    open: HashMap<(JobId, u32, Stream), (std::fs::File, u64)>,
    /// The attempt whose output `logs/<job>/` holds (shared: attempts may run on other nodes).
    attempts: Arc<Mutex<HashMap<JobId, u32>>>,
}

impl OutputSink {
    /// A retry's output replaces the previous attempt's in `logs/<job>/`;
    /// the older output moves to `logs/<job>/attempt-<N>/`.
    fn rotate(&mut self, job: JobId, from: u32, to: u32) -> std::io::Result<()> {
        self.open.retain(|(j, ..), _| *j != job);
        let dir = self.dir.join(job.to_string());
        std::fs::create_dir_all(&dir)?;
        let keep = dir.join(format!("attempt-{from}"));
        for e in std::fs::read_dir(&dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".out") || name.ends_with(".err") {
                std::fs::create_dir_all(&keep)?;
                std::fs::rename(e.path(), keep.join(&name))?;
            }
        }
        std::fs::write(dir.join(".attempt"), to.to_string())?;
        self.attempts.lock().expect("attempts lock").insert(job, to);
        Ok(())
    }

    fn write(
        &mut self,
        job: JobId,
        attempt: u32,
        rank: u32,
        stream: Stream,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let stored = stored_attempt(&self.attempts, &self.dir, job);
        if attempt < stored {
            return Ok(()); // a superseded attempt's resend
        }
        if attempt > stored {
            self.rotate(job, stored, attempt)?;
        }
        let key = (job, rank, stream);
        if !self.open.contains_key(&key) {
            let dir = self.dir.join(job.to_string());
            std::fs::create_dir_all(&dir)?;
            let ext = if stream == Stream::Stdout { "out" } else { "err" };
            let f = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{rank}.{ext}")))?;
            let len = f.metadata()?.len();
            if self.open.len() > 4096 {
                self.open.clear();
            }
            self.open.insert(key, (f, len));
        }
        let (f, len) = self.open.get_mut(&key).expect("inserted");
        let end = offset + data.len() as u64;
        if end <= *len {
            return Ok(()); // already stored
        }
        if offset > *len {
            tracing::warn!(%job, rank, "output gap: have {} bytes, got a chunk at {offset}", *len);
        }
        let skip = len.saturating_sub(offset) as usize;
        f.write_all(&data[skip..])?;
        *len = (*len).max(offset) + (data.len() - skip) as u64;
        Ok(())
    }

    fn close(&mut self, job: JobId, rank: u32) {
        self.open.remove(&(job, rank, Stream::Stdout));
        self.open.remove(&(job, rank, Stream::Stderr));
    }
}

async fn agent(conn: quinn::Connection, s: FramedStream, id: CertIdentity, ctx: Arc<Ctx>) -> Result<()> {
    let FramedStream { mut send, mut recv } = s;
    let mut sink =
        OutputSink { dir: ctx.logs_dir.clone(), open: HashMap::new(), attempts: ctx.output_attempts.clone() };
    // Output resent from the agent's spool may precede the registration.
    let reg = loop {
        match recv.recv::<FromAgent>().await? {
            Some(FromAgent::Register(r)) => break r,
            Some(FromAgent::Output { job, attempt, rank, stream, offset, data }) => {
                if let Err(e) = sink.write(job, attempt, rank, stream, offset, &data) {
                    tracing::warn!(%job, rank, "cannot store output: {e}");
                }
            }
            Some(_) => return Err(anyhow!("agent {} sent something before registering", id.name)),
            None => return Ok(()),
        }
    };
    if reg.name != id.name {
        return Err(anyhow!("agent certificate is for {} but it registered as {}", id.name, reg.name));
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ToAgent>();
    let (node, generation) = ctx.ask(|reply| Input::AgentUp { reg, tx, reply }).await?;
    tracing::info!(name = id.name, %node, "agent registered");
    let writer = tokio::spawn(async move {
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(m) = rx.recv().await {
            nodeagent::wire::batch_frames(&mut buf, &m, &mut rx);
            if send.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        let msg = match recv.recv::<FromAgent>().await {
            Ok(Some(m)) => m,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        match msg {
            FromAgent::Output { job, attempt, rank, stream, offset, data } => {
                if let Err(e) = sink.write(job, attempt, rank, stream, offset, &data) {
                    tracing::warn!(%job, rank, "cannot store output: {e}");
                }
                let _ = ctx.events.send(JobEvent { job });
            }
            FromAgent::TaskExited { job, rank, .. } => {
                sink.close(job, rank);
                ctx.send(Input::Agent { node, msg })?;
            }
            FromAgent::Heartbeat { .. } => {}
            msg => ctx.send(Input::Agent { node, msg })?,
        }
    };
    writer.abort();
    conn.close(0u32.into(), b"bye");
    let _ = ctx.send(Input::AgentDown { node, generation });
    tracing::info!(name = id.name, "agent disconnected");
    result
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ErrorMsg { kind, message: message.into() })
}

async fn request(mut s: FramedStream, ctx: &Ctx, id: &CertIdentity) -> Result<()> {
    let req: Request = match s.recv().await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => {
            s.send(&error(ErrorKind::BadRequest, format!("malformed request: {e}"))).await?;
            let _ = s.send.finish();
            return Ok(());
        }
    };
    let admin = id.role == "admin";
    let resp = match req {
        Request::Submit { mut spec, key } => {
            spec.user = id.name.clone();
            ctx.ask(|reply| Input::Submit { spec, key, reply }).await?
        }
        Request::Queue { all } => Response::Jobs(ctx.ask(|reply| Input::Queue { all, reply }).await?),
        Request::Show { job } => match ctx.ask(|reply| Input::Show { job, reply }).await? {
            Some(info) => Response::Job(Box::new(info)),
            None => error(ErrorKind::NotFound, format!("no job {job}")),
        },
        Request::Cancel { jobs } => {
            Response::Cancelled(ctx.ask(|reply| Input::Cancel { jobs, user: id.name.clone(), admin, reply }).await?)
        }
        Request::Nodes => Response::Nodes(ctx.ask(|reply| Input::Nodes { reply }).await?),
        Request::Logs { job, rank, follow } => return logs(s, ctx, job, rank, follow).await,
        Request::CreateToken { .. } | Request::AddUser { .. } if !admin => {
            error(ErrorKind::Forbidden, format!("user {} is not an admin", id.name))
        }
        Request::CreateToken { ttl_s } => match ctx.ask(|reply| Input::Token { ttl_s, reply }).await? {
            Ok(t) => Response::Token(t),
            Err(e) => error(ErrorKind::Internal, e),
        },
        Request::AddUser { name, role } => match ctx.ask(|reply| Input::AddUser { name, role, reply }).await? {
            Ok(c) => Response::Credential(c),
            Err(e) => error(ErrorKind::BadRequest, e),
        },
        Request::Admin(_) if !admin => error(
            ErrorKind::Forbidden,
            format!("user {} is not an admin; compute environments, queues and policies are admin-only", id.name),
        ),
        Request::Admin(op) => {
            call(ctx, move |core, t, fx| match core.on_admin(t, fx, op) {
                Ok(m) => Response::Done(m),
                Err(e) => error(ErrorKind::BadRequest, e),
            })
            .await?
        }
        Request::Ces => call(ctx, |core, _, _| Response::Ces(core.ce_infos())).await?,
        Request::Queues => call(ctx, |core, _, _| Response::Queues(core.queue_infos())).await?,
        Request::Policies => call(ctx, |core, _, _| Response::Policies(core.policy_list())).await?,
        Request::JobdefRegister(def) => {
            call(ctx, move |core, _, fx| match core.jobdef_register(fx, *def) {
                Ok(d) => Response::Jobdefs(vec![d]),
                Err(e) => error(ErrorKind::BadRequest, e),
            })
            .await?
        }
        Request::Jobdefs { name, all } => {
            call(ctx, move |core, _, _| Response::Jobdefs(core.jobdefs(name.as_deref(), all))).await?
        }
        Request::JobdefDeregister { name, revision } => {
            call(ctx, move |core, _, fx| match core.jobdef_deregister(fx, &name, revision) {
                Ok(m) => Response::Done(m),
                Err(e) => error(ErrorKind::NotFound, e),
            })
            .await?
        }
    };
    s.send(&resp).await?;
    let _ = s.send.finish();
    Ok(())
}

/// Run a closure on the core in the driver's next batch.
async fn call(
    ctx: &Ctx,
    f: impl FnOnce(&mut launcher_core::Core, launcher_core::Time, &mut super::driver::Fx) -> Response + Send + 'static,
) -> Result<Response> {
    ctx.ask(|reply| Input::Call { f: Box::new(f), reply }).await
}

/// Where a follower is in each output file: the file (its inode) and the bytes sent.
type Offsets = HashMap<String, (u64, u64)>;

/// Send what was added to the rank files in `dir` since `offsets`. A file
/// that is not the one `offsets` knows (a retry rotated it away) is left
/// for the caller: returns the names of such files.
async fn send_new_output(
    s: &mut FramedStream,
    dir: &std::path::Path,
    rank: Option<u32>,
    offsets: &mut Offsets,
) -> Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut files: Vec<(u32, Stream, PathBuf, String)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (r, ext) = name.split_once('.')?;
            let r: u32 = r.parse().ok()?;
            let stream = match ext {
                "out" => Stream::Stdout,
                "err" => Stream::Stderr,
                _ => return None,
            };
            Some((r, stream, e.path(), name))
        })
        .filter(|(r, ..)| rank.is_none_or(|want| want == *r))
        .collect();
    files.sort();
    let mut buf = vec![0u8; 256 * 1024];
    let mut replaced = Vec::new();
    for (r, stream, path, name) in files {
        let Ok(mut f) = std::fs::File::open(&path) else { continue };
        let ino = f.metadata()?.ino();
        let (known, off) = offsets.entry(name.clone()).or_insert((ino, 0));
        if *known != ino {
            replaced.push(name);
            continue;
        }
        f.seek(SeekFrom::Start(*off))?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            *off += n as u64;
            s.send(&Response::Output { rank: r, stream, data: buf[..n].to_vec() }).await?;
        }
    }
    Ok(replaced)
}

/// The attempt whose output `logs_dir/<job>/` holds now: its `.attempt`
/// marker (1 when there is none), read once and then kept in `attempts`,
/// which `OutputSink::rotate` updates.
fn stored_attempt(attempts: &Mutex<HashMap<JobId, u32>>, logs_dir: &std::path::Path, job: JobId) -> u32 {
    let mut map = attempts.lock().expect("attempts lock");
    *map.entry(job).or_insert_with(|| {
        let marker = logs_dir.join(job.to_string()).join(".attempt");
        std::fs::read_to_string(marker).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1)
    })
}

async fn logs(mut s: FramedStream, ctx: &Ctx, job: JobId, rank: Option<u32>, follow: bool) -> Result<()> {
    let mut events = ctx.events.subscribe();
    let dir = ctx.logs_dir.join(job.to_string());
    let mut offsets = Offsets::new();
    // The attempt whose files `offsets` describe.
    let mut reading: Option<u32> = None;
    loop {
        // State first, then output: output reaches disk before the exit that
        // makes a job terminal, so after seeing "terminal" one more read gets all.
        let Some(info) = ctx.ask(|reply| Input::Show { job, reply }).await? else {
            s.send(&error(ErrorKind::NotFound, format!("no job {job}"))).await?;
            let _ = s.send.finish();
            return Ok(());
        };
        // A retry began: the attempt we were following moved to attempt-<N>/.
        // Finish it there, then follow the new one from its start, so a
        // follower sees every attempt's output in order.
        let stored = stored_attempt(&ctx.output_attempts, &ctx.logs_dir, job);
        if let Some(old) = reading.filter(|a| *a < stored) {
            send_new_output(&mut s, &dir.join(format!("attempt-{old}")), rank, &mut offsets).await?;
            offsets.clear();
        }
        reading = Some(stored);
        let replaced = send_new_output(&mut s, &dir, rank, &mut offsets).await?;
        if !replaced.is_empty() {
            if stored_attempt(&ctx.output_attempts, &ctx.logs_dir, job) > stored {
                continue; // a retry rotated the files while we read: finish the old ones first
            }
            // Replaced some other way: these are new files, read from their start.
            for name in replaced {
                offsets.remove(&name);
            }
            send_new_output(&mut s, &dir, rank, &mut offsets).await?;
        }
        if !follow || info.state.is_terminal() {
            s.send(&Response::LogsEnd(Box::new(info))).await?;
            let _ = s.send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.send.stopped()).await;
            return Ok(());
        }
        // Wait for something about this job (or a periodic re-check).
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(JobEvent { job: j }) if j == job => break,
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return Ok(()),
                },
                _ = &mut deadline => break,
                _ = s.send.stopped() => return Ok(()),
            }
        }
    }
}
