//! A throwaway certificate authority and a server certificate signed by it, for services
//! that must be reached over HTTPS with a CA nobody trusts by default (a private registry).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use base64::{Engine as _, engine::general_purpose::STANDARD};

/// Files of a CA and one server certificate it signed.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate, PEM: what a client must trust.
    pub ca_path: PathBuf,
    /// The server certificate, PEM.
    pub cert_path: PathBuf,
    /// The server's private key, PKCS#8 PEM.
    pub key_path: PathBuf,
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl TestCa {
    /// A new CA and a certificate for `names` (DNS names or IP addresses) signed by it,
    /// written as `ca.pem`, `server.pem` and `server-key.pem` in `dir`.
    ///
    /// # Errors
    /// Key generation, signing or writing failed.
    pub fn issue(dir: &Path, names: &[&str]) -> Result<Self> {
        let ca_key = rcgen::KeyPair::generate().context("CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "damselfly e2e CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .context("self-signing the CA")?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let key = rcgen::KeyPair::generate().context("server key")?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "damselfly e2e server");
        let cert = params.signed_by(&key, &issuer).context("signing")?;

        let out = Self {
            ca_path: dir.join("ca.pem"),
            cert_path: dir.join("server.pem"),
            key_path: dir.join("server-key.pem"),
        };
        std::fs::write(&out.ca_path, pem("CERTIFICATE", ca_cert.der()))?;
        std::fs::write(&out.cert_path, pem("CERTIFICATE", cert.der()))?;
        std::fs::write(&out.key_path, pem("PRIVATE KEY", &key.serialize_der()))?;
        Ok(out)
    }

    /// The CA certificate, PEM.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        std::fs::read(&self.ca_path).with_context(|| format!("reading {}", self.ca_path.display()))
    }
}
