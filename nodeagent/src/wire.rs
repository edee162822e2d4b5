//! QUIC transport shared by the node agent and the CLI: framed messages on
//! quinn streams, mutual-TLS client configurations, credentials, join tokens.
//!
//! The controller's half (server config, certificate issuing) lives in the
//! `launcher` crate; this module holds what every *client* of the controller
//! needs, so the agent does not link SQLite or the scheduler.
//!
//! Trust model: every peer trusts exactly one cluster CA. A CLI credential
//! carries the CA, a client certificate and its key. A joining agent has no
//! CA yet; its join token carries the SHA-256 fingerprint of the CA
//! certificate, and the agent accepts the controller only if the chain it
//! presents contains a CA with that fingerprint which signed the server
//! certificate (the kubeadm discovery-hash idea).

use anyhow::{anyhow, bail, Context, Result};
use launcher_proto::{
    decode, encode_frame, FrameDecoder, Hello, HelloReply, Role, ALPN, PROTOCOL_VERSION, SERVER_NAME,
};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Keep-alive interval on every connection.
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A connection with no traffic for this long is dead (the peer crashed).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// The rustls crypto provider (ring, per shared/research/deps-probe.md §4.2).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Transport settings used by every endpoint.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(IDLE_TIMEOUT.try_into().expect("3 s is a valid idle timeout")));
    t.max_concurrent_bidi_streams(4096u32.into());
    t.max_concurrent_uni_streams(1024u32.into());
    Arc::new(t)
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Parse lower/upper-case hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// Parse PEM certificates.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("bad certificate PEM: {e}"))?;
    if certs.is_empty() {
        bail!("no certificate found in PEM");
    }
    Ok(certs)
}

/// Parse a PEM private key.
pub fn key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| anyhow!("bad private key PEM: {e}"))
}

/// A 32-byte value (a SHA-256 fingerprint) from 64 hex digits.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// Write a secret (key, credential) with mode 0600, atomically: a reader
/// never sees half a file, and a crash leaves the old one or the new one.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// A CLI credential: where the controller is, and how to prove who we are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credential {
    /// Cluster name.
    pub cluster: String,
    /// `host:port` of the controller.
    pub controller: String,
    /// User name.
    pub user: String,
    /// Cluster CA certificate (PEM).
    pub ca: String,
    /// Client certificate (PEM).
    pub cert: String,
    /// Client private key (PEM).
    pub key: String,
}

impl Credential {
    /// Read and validate a credential file.
    pub fn load(path: &Path) -> Result<Credential> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read credential file {}", path.display()))?;
        let cred: Credential = serde_json::from_str(&text).map_err(|e| {
            anyhow!(
                "credential file {} is corrupted or not a launcher credential ({e}); ask an admin for a new one (`launcher user add`)",
                path.display()
            )
        })?;
        certs_from_pem(&cred.ca).with_context(|| format!("credential file {}: CA certificate", path.display()))?;
        certs_from_pem(&cred.cert)
            .with_context(|| format!("credential file {}: client certificate", path.display()))?;
        key_from_pem(&cred.key).with_context(|| format!("credential file {}: private key", path.display()))?;
        Ok(cred)
    }

    /// Write with mode 0600, atomically (a reader never sees half a file).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_private(path, serde_json::to_string_pretty(self)?.as_bytes())
    }
}

/// Client TLS config trusting `ca_pem` and presenting `cert_pem`/`key_pem`.
pub fn client_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<quinn::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c).context("CA certificate")?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_from_pem(cert_pem)?, key_from_pem(key_pem)?)
        .context("client certificate and key do not match")?;
    finish_client(tls)
}

fn finish_client(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// A parsed join token: `lt1.<ca sha256 hex>.<secret hex>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// Fingerprint of the cluster CA certificate.
    pub ca_fingerprint: [u8; 32],
    /// The whole token, sent to the controller.
    pub raw: String,
}

impl std::str::FromStr for JoinToken {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let bad =
            || anyhow!("malformed join token: expected lt1.<64 hex>.<secret>; create one with `launcher token create`");
        if parts.len() != 3 || parts[0] != "lt1" || parts[2].is_empty() {
            return Err(bad());
        }
        let ca_fingerprint = unhex32(parts[1]).ok_or_else(bad)?;
        Ok(JoinToken { ca_fingerprint, raw: s.trim().to_string() })
    }
}

/// Client TLS config for joining: no client certificate; trust the server only
/// if its chain holds a CA with the pinned fingerprint that signed it.
pub fn join_client_config(token: &JoinToken) -> Result<quinn::ClientConfig> {
    let verifier = PinnedCaVerifier { fingerprint: token.ca_fingerprint, provider: provider() };
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    finish_client(tls)
}

#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates.iter().find(|c| fingerprint(c) == self.fingerprint).ok_or_else(|| {
            rustls::Error::General(
                "the controller's CA does not match the fingerprint in the join token (wrong cluster or tampered token)".into(),
            )
        })?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client endpoint bound to an ephemeral UDP port.
pub fn client_endpoint(cfg: quinn::ClientConfig) -> Result<quinn::Endpoint> {
    let mut ep =
        quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid addr")).context("cannot bind a UDP socket")?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// Resolve `host:port`.
pub fn resolve(addr: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve controller address {addr:?} (expected host:port)"))?
        .next()
        .ok_or_else(|| anyhow!("controller address {addr:?} resolves to nothing"))
}

/// Connect and perform the launcher handshake on a fresh bidirectional stream.
/// Returns the connection, the handshake stream and the identity the
/// controller assigned us.
pub async fn connect(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    role: Role,
    timeout: Duration,
) -> Result<(quinn::Connection, FramedStream, String)> {
    let connecting = ep.connect(addr, SERVER_NAME).context("cannot start a QUIC connection")?;
    let conn = tokio::time::timeout(timeout, connecting)
        .await
        .map_err(|_| {
            anyhow!("no answer from the controller at {addr} within {timeout:?} (is `launcher serve` running there?)")
        })?
        .map_err(|e| anyhow!("TLS/QUIC handshake with the controller at {addr} failed: {e}"))?;
    let (send, recv) = tokio::time::timeout(timeout, conn.open_bi())
        .await
        .map_err(|_| anyhow!("controller at {addr} did not accept a stream"))?
        .map_err(|e| describe_conn_error(addr, e))?;
    let mut s = FramedStream::new(send, recv);
    s.send(&Hello { version: PROTOCOL_VERSION, role }).await?;
    let reply: HelloReply = tokio::time::timeout(timeout, s.recv())
        .await
        .map_err(|_| anyhow!("controller at {addr} did not answer the handshake"))?
        .map_err(|e| match e.downcast::<quinn::ReadError>() {
            Ok(quinn::ReadError::ConnectionLost(c)) => describe_conn_error(addr, c),
            Ok(other) => anyhow!("handshake with {addr} failed: {other}"),
            Err(e) => e,
        })?
        .ok_or_else(|| anyhow!("controller at {addr} closed the handshake stream"))?;
    match reply {
        HelloReply::Welcome { identity, .. } => Ok((conn, s, identity)),
        HelloReply::Rejected(e) => Err(anyhow!("controller refused us: {e}")),
    }
}

fn describe_conn_error(addr: SocketAddr, e: quinn::ConnectionError) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("UnknownIssuer") || text.contains("unknown ca") || text.contains("BadSignature") {
        anyhow!(
            "the controller at {addr} rejected our certificate: it was not issued by this cluster's CA ({text}); get a credential for this cluster"
        )
    } else if text.contains("certificate") {
        anyhow!("certificate problem talking to {addr}: {text}")
    } else {
        anyhow!("connection to the controller at {addr} failed: {text}")
    }
}

/// Encode `first` and whatever else is already queued (up to ~256 KiB) into
/// `buf`, so a burst of messages becomes one stream write.
pub fn batch_frames<T: Serialize>(buf: &mut Vec<u8>, first: &T, rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>) {
    buf.clear();
    buf.extend_from_slice(&launcher_proto::encode_frame(first));
    while buf.len() < 256 * 1024 {
        match rx.try_recv() {
            Ok(m) => buf.extend_from_slice(&launcher_proto::encode_frame(&m)),
            Err(_) => break,
        }
    }
}

/// A bidirectional stream carrying length-delimited postcard frames.
pub struct FramedStream {
    /// Sending half.
    pub send: quinn::SendStream,
    /// Receiving half.
    pub recv: FramedRecv,
}

/// The receiving half of a [`FramedStream`].
pub struct FramedRecv {
    recv: quinn::RecvStream,
    dec: FrameDecoder,
}

impl FramedRecv {
    /// Wrap a receive stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        FramedRecv { recv, dec: FrameDecoder::new() }
    }

    /// Next message, or None at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        loop {
            if let Some(frame) = self.dec.next_frame()? {
                return Ok(Some(decode(&frame)?));
            }
            match self.recv.read_chunk(64 * 1024, true).await? {
                Some(chunk) => self.dec.extend(&chunk.bytes),
                None => {
                    self.dec.finish()?;
                    return Ok(None);
                }
            }
        }
    }
}

impl FramedStream {
    /// Wrap a stream pair.
    pub fn new(send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        FramedStream { send, recv: FramedRecv::new(recv) }
    }

    /// Send one message.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<()> {
        self.send.write_all(&encode_frame(msg)).await?;
        Ok(())
    }

    /// Next message, or None at a clean end of stream.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>> {
        self.recv.recv().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_errors() {
        let t: JoinToken = format!("lt1.{}.abcd", "ab".repeat(32)).parse().unwrap();
        assert_eq!(t.ca_fingerprint, [0xab; 32]);
        for bad in ["", "lt1.zz.abc", "lt2.ab.cd", &format!("lt1.{}.", "ab".repeat(32))] {
            let e = bad.parse::<JoinToken>().unwrap_err().to_string();
            assert!(e.contains("malformed join token"), "{e}");
        }
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex(&hex(&[0, 1, 255])).unwrap(), vec![0, 1, 255]);
        assert!(unhex("0").is_none());
    }

    #[test]
    fn corrupted_credential_names_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cred.json");
        std::fs::write(&p, "{ this is not json").unwrap();
        let e = format!("{:#}", Credential::load(&p).unwrap_err());
        assert!(e.contains("cred.json") && e.contains("corrupted"), "{e}");
        std::fs::write(&p, r#"{"cluster":"c","controller":"x:1","user":"u","ca":"nope","cert":"nope","key":"nope"}"#)
            .unwrap();
        let e = format!("{:#}", Credential::load(&p).unwrap_err());
        assert!(e.contains("CA certificate"), "{e}");
    }
}
