//! The CLI's connection to the controller: find the credential, connect with
//! retries, send requests, and map failures to the CLI's exit codes.

use anyhow::{anyhow, Result};
use launcher_proto::{Request, Response, Role};
use nodeagent::wire::{self, Credential, FramedStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Exit codes (stable, documented in docs/user-guide.md).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The job failed.
    pub const JOB_FAILED: i32 = 1;
    /// Bad usage or a request the controller refused.
    pub const USAGE: i32 = 2;
    /// Cannot reach or authenticate to the controller.
    pub const UNREACHABLE: i32 = 3;
}

/// An error that carries its exit code.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct CliError {
    /// Exit code.
    pub code: i32,
    /// Message.
    pub msg: String,
}

/// Shorthand for a usage error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    CliError { code: exit::USAGE, msg: msg.into() }.into()
}

/// Shorthand for an unreachable/unauthenticated error.
pub fn unreachable(msg: impl Into<String>) -> anyhow::Error {
    CliError { code: exit::UNREACHABLE, msg: msg.into() }.into()
}

/// Where the credential is: `--cred`, `$LAUNCHER_CRED`, then `~/.config/launcher/cred.json`.
pub fn credential_path(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p);
    }
    if let Some(p) = std::env::var_os("LAUNCHER_CRED") {
        return Ok(PathBuf::from(p));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".config/launcher/cred.json");
        if p.exists() {
            return Ok(p);
        }
    }
    Err(unreachable(
        "no credential: set LAUNCHER_CRED (`launcher up` prints it), pass --cred FILE, or put one at ~/.config/launcher/cred.json",
    ))
}

/// A connected client.
pub struct Client {
    conn: quinn::Connection,
    ep: quinn::Endpoint,
    cred: Credential,
    patience: Duration,
}

/// How long to keep retrying an unreachable controller (`LAUNCHER_CONNECT_TIMEOUT` seconds, default 5).
pub fn patience() -> Duration {
    std::env::var("LAUNCHER_CONNECT_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or(Duration::from_secs(5))
}

impl Client {
    /// The user name of our credential (what `spec.user` says of our jobs).
    pub fn user(&self) -> &str {
        &self.cred.user
    }

    /// Load the credential and connect, retrying until `patience()` runs out.
    pub async fn connect(cred: Option<PathBuf>) -> Result<Client> {
        let path = credential_path(cred)?;
        let cred = Credential::load(&path).map_err(|e| unreachable(format!("{e:#}")))?;
        let cfg = wire::client_config(&cred.ca, &cred.cert, &cred.key)
            .map_err(|e| unreachable(format!("credential {}: {e:#}", path.display())))?;
        let ep = wire::client_endpoint(cfg)?;
        let patience = patience();
        let conn = Self::dial(&ep, &cred, patience).await?;
        Ok(Client { conn, ep, cred, patience })
    }

    async fn dial(ep: &quinn::Endpoint, cred: &Credential, patience: Duration) -> Result<quinn::Connection> {
        let addr = wire::resolve(&cred.controller).map_err(|e| unreachable(format!("{e:#}")))?;
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let left = patience.saturating_sub(start.elapsed()).max(Duration::from_millis(200));
            match wire::connect(ep, addr, Role::Client, left.min(Duration::from_secs(3))).await {
                Ok((conn, mut hs, _)) => {
                    let _ = hs.send.finish();
                    return Ok(conn);
                }
                Err(e) => {
                    let text = format!("{e:#}");
                    let fatal = text.contains("refused us") || text.contains("certificate");
                    if fatal || start.elapsed() >= patience {
                        return Err(unreachable(text));
                    }
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// The credential in use.
    pub fn credential(&self) -> &Credential {
        &self.cred
    }

    /// Open a request stream.
    pub async fn stream(&self, req: &Request) -> Result<FramedStream> {
        let (send, recv) = self.conn.open_bi().await.map_err(|e| unreachable(format!("lost the controller: {e}")))?;
        let mut s = FramedStream::new(send, recv);
        s.send(req).await?;
        s.send.finish()?;
        Ok(s)
    }

    /// One request, one response. Refusals come back as `Response::Error`.
    pub async fn call(&self, req: &Request) -> Result<Response> {
        let mut s = self.stream(req).await?;
        s.recv::<Response>()
            .await
            .map_err(|e| unreachable(format!("lost the controller: {e:#}")))?
            .ok_or_else(|| unreachable("the controller closed the stream without answering"))
    }

    /// Like [`Client::call`], but reconnects and retries while the controller
    /// is unreachable (safe only for idempotent requests, such as a submit
    /// carrying an idempotency key).
    pub async fn call_retrying(&mut self, req: &Request) -> Result<Response> {
        let start = Instant::now();
        loop {
            match self.call(req).await {
                Ok(r) => return Ok(r),
                Err(e) if start.elapsed() < self.patience => {
                    tracing::debug!("retrying after: {e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if let Ok(c) = Self::dial(&self.ep, &self.cred, self.patience.saturating_sub(start.elapsed())).await
                    {
                        self.conn = c;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Client {
    /// Tell the controller we are gone (a CONNECTION_CLOSE, sent when the
    /// runtime next polls the connection): otherwise it keeps the connection,
    /// with keep-alives, until the idle timeout, for every CLI call made.
    fn drop(&mut self) {
        self.conn.close(0u32.into(), b"done");
    }
}

/// Turn a `Response::Error` into a CLI error with the right exit code.
pub fn check(resp: Response) -> Result<Response> {
    match resp {
        Response::Error(e) => {
            let code = match e.kind {
                launcher_proto::ErrorKind::Forbidden => exit::USAGE,
                launcher_proto::ErrorKind::Internal => exit::JOB_FAILED,
                _ => exit::USAGE,
            };
            Err(CliError { code, msg: e.message }.into())
        }
        r => Ok(r),
    }
}

/// A response that should not have come.
pub fn unexpected(r: Response) -> anyhow::Error {
    anyhow!("unexpected answer from the controller: {r:?}")
}
