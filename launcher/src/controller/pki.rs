//! The cluster CA: created by `launcher serve --init` (or on first start),
//! it signs the controller's server certificate, every agent certificate
//! (over the agent's own public key, at join time) and every user credential.
//!
//! Identity is by certificate fingerprint: the controller keeps a table of the
//! certificates it issued (`certs` in the store), so a certificate is only
//! honoured if this cluster issued it and has not revoked it.

use anyhow::{Context, Result};
use nodeagent::wire::{self, fingerprint, hex, Credential};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use std::path::{Path, PathBuf};

/// Files of the CA in the state dir.
pub struct Pki {
    dir: PathBuf,
    ca_key: KeyPair,
    ca_pem: String,
    cluster: String,
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("launcher cluster CA {cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    p
}

fn leaf_params(cn: &str, sans: Vec<String>, server: bool) -> Result<CertificateParams> {
    let mut p = CertificateParams::new(sans)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages =
        vec![if server { ExtendedKeyUsagePurpose::ServerAuth } else { ExtendedKeyUsagePurpose::ClientAuth }];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(p)
}

/// A raw P-256 public key sent by a joining agent.
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A freshly issued client identity.
pub struct Issued {
    /// Certificate PEM.
    pub cert_pem: String,
    /// SHA-256 of the certificate DER.
    pub fingerprint: [u8; 32],
}

impl Pki {
    /// Load the CA from `dir`, or create it (and the server certificate) if absent.
    /// Returns the PKI and whether it was created now.
    pub fn load_or_init(dir: &Path, cluster: &str) -> Result<(Pki, bool)> {
        let key_p = dir.join("ca.key");
        let pem_p = dir.join("ca.pem");
        let created = !key_p.exists();
        if created {
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let cert = ca_params(cluster).self_signed(&key)?;
            wire::write_private(&key_p, key.serialize_pem().as_bytes())?;
            std::fs::write(&pem_p, cert.pem())?;
            std::fs::write(dir.join("cluster"), cluster)?;
        }
        let cluster = std::fs::read_to_string(dir.join("cluster")).unwrap_or_else(|_| cluster.to_string());
        let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&key_p).context("reading ca.key")?)?;
        let ca_pem = std::fs::read_to_string(&pem_p).context("reading ca.pem")?;
        let pki = Pki { dir: dir.to_path_buf(), ca_key, ca_pem, cluster: cluster.trim().to_string() };
        if created || !dir.join("server.pem").exists() {
            pki.issue_server()?;
        }
        Ok((pki, created))
    }

    /// Cluster name.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// SHA-256 of the CA certificate, as pinned in join tokens.
    pub fn ca_fingerprint(&self) -> Result<[u8; 32]> {
        let der = wire::certs_from_pem(&self.ca_pem)?.remove(0);
        Ok(fingerprint(&der))
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::new(ca_params(&self.cluster), &self.ca_key)
    }

    fn issue_server(&self) -> Result<()> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = leaf_params("launcher controller", vec![launcher_proto::SERVER_NAME.to_string()], true)?;
        let cert = params.signed_by(&key, &self.issuer())?;
        wire::write_private(&self.dir.join("server.key"), key.serialize_pem().as_bytes())?;
        std::fs::write(self.dir.join("server.pem"), format!("{}{}", cert.pem(), self.ca_pem))?;
        Ok(())
    }

    /// The server's rustls config: TLS 1.3, client certificates from our CA
    /// verified when presented (joining agents present none, and may only join).
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in wire::certs_from_pem(&self.ca_pem)? {
            roots.add(c)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), wire::provider())
            .allow_unauthenticated()
            .build()?;
        let chain = wire::certs_from_pem(&std::fs::read_to_string(self.dir.join("server.pem"))?)?;
        let key = wire::key_from_pem(&std::fs::read_to_string(self.dir.join("server.key"))?)?;
        let mut tls = rustls::ServerConfig::builder_with_provider(wire::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        tls.alpn_protocols = vec![launcher_proto::ALPN.to_vec()];
        let mut cfg = quinn::ServerConfig::with_crypto(std::sync::Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
        ));
        cfg.transport_config(wire::transport());
        Ok(cfg)
    }

    /// Certificate for a joining agent's public key.
    pub fn issue_agent(&self, name: &str, public_key: &[u8]) -> Result<Issued> {
        let params = leaf_params(&format!("agent/{name}"), vec![format!("{name}.node.launcher")], false)?;
        let cert = params.signed_by(&RawP256(public_key.to_vec()), &self.issuer())?;
        Ok(Issued { fingerprint: fingerprint(cert.der()), cert_pem: cert.pem() })
    }

    /// A complete user credential (key generated here).
    pub fn issue_user(&self, name: &str, controller: &str) -> Result<(Credential, [u8; 32])> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = leaf_params(&format!("user/{name}"), vec![format!("{name}.user.launcher")], false)?;
        let cert = params.signed_by(&key, &self.issuer())?;
        let fp = fingerprint(cert.der());
        Ok((
            Credential {
                cluster: self.cluster.clone(),
                controller: controller.to_string(),
                user: name.to_string(),
                ca: self.ca_pem.clone(),
                cert: cert.pem(),
                key: key.serialize_pem(),
            },
            fp,
        ))
    }

    /// A join token: `lt1.<ca fingerprint>.<secret>`; returns (token, secret hash).
    pub fn new_token(&self) -> Result<(String, String)> {
        let mut secret = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| anyhow::anyhow!("no randomness available"))?;
        let token = format!("lt1.{}.{}", hex(&self.ca_fingerprint()?), hex(&secret));
        Ok((token.clone(), token_hash(&token)))
    }
}

/// How a token is stored: SHA-256 of the whole token, hex.
pub fn token_hash(token: &str) -> String {
    hex(&fingerprint(token.trim().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_survives_reload_and_issues_verifiable_certs() {
        let d = tempfile::tempdir().unwrap();
        let (a, created) = Pki::load_or_init(d.path(), "test").unwrap();
        assert!(created);
        let (b, created) = Pki::load_or_init(d.path(), "other-name-ignored").unwrap();
        assert!(!created);
        assert_eq!(a.ca_pem(), b.ca_pem());
        assert_eq!(b.cluster(), "test");
        let (cred, fp) = b.issue_user("alice", "127.0.0.1:1").unwrap();
        assert_eq!(fp, fingerprint(&wire::certs_from_pem(&cred.cert).unwrap()[0]));
        // The reloaded CA's issuer name matches the original certificate, so
        // clients built from the credential are valid rustls configs.
        wire::client_config(&cred.ca, &cred.cert, &cred.key).unwrap();
        let (tok, hash) = b.new_token().unwrap();
        let parsed: wire::JoinToken = tok.parse().unwrap();
        assert_eq!(parsed.ca_fingerprint, b.ca_fingerprint().unwrap());
        assert_eq!(token_hash(&tok), hash);
    }
}
