//! Registry token authentication (Docker's token spec, as distribution 2.8 verifies it): an
//! ES256 key with a self-signed certificate that the registry trusts (`rootcertbundle`), and
//! JWTs carrying `x5c` and an `access` list. Tests mint the tokens a token server (or Harbor)
//! would hand out, so no token server is needed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};
use base64::{
    Engine as _, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD,
};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair},
};

/// The `service` (JWT audience) the test registry expects.
pub const TOKEN_SERVICE: &str = "damselfly-e2e-registry";
/// The `issuer` the test registry expects.
pub const TOKEN_ISSUER: &str = "damselfly-e2e-token-issuer";

/// Mints registry tokens.
pub struct TokenIssuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    cert_pem: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").finish_non_exhaustive()
    }
}

impl TokenIssuer {
    /// A fresh key and certificate.
    ///
    /// # Errors
    /// Key generation or certificate signing failed.
    pub fn new() -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow!("cannot generate a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("cannot load the generated key: {e}"))?;
        let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).context("rcgen key")?;
        let params = rcgen::CertificateParams::new(vec![TOKEN_ISSUER.to_owned()])
            .context("certificate parameters")?;
        let cert = params.self_signed(&rc_key).context("self-signing")?;
        let cert_der = cert.der().to_vec();
        let b64 = STANDARD.encode(&cert_der);
        let mut cert_pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            cert_pem.push_str(&String::from_utf8_lossy(line));
            cert_pem.push('\n');
        }
        cert_pem.push_str("-----END CERTIFICATE-----\n");
        Ok(Self {
            key,
            cert_der,
            cert_pem,
            rng,
        })
    }

    /// The certificate, PEM, for the registry's `rootcertbundle`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A token granting `actions` (`pull`, `push`) on repository `repo` (none if `repo` is
    /// empty), valid for `ttl`.
    ///
    /// # Errors
    /// Signing failed.
    pub fn token(&self, repo: &str, actions: &[&str], ttl: Duration) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let access = if repo.is_empty() {
            serde_json::json!([])
        } else {
            serde_json::json!([{ "type": "repository", "name": repo, "actions": actions }])
        };
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER,
            "sub": "damselfly-e2e",
            "aud": TOKEN_SERVICE,
            "exp": now + ttl.as_secs(),
            "nbf": now.saturating_sub(60),
            "iat": now,
            "jti": format!("{now}-{}", rand_suffix()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| anyhow!("signing the token failed"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(sig.as_ref())
        ))
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The repository named by a registry API path (`/v2/<name>/blobs/...`), if any.
pub(crate) fn repo_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .map(|i| &rest[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_are_found_in_api_paths() {
        assert_eq!(repo_of("/v2/a/b/blobs/uploads/"), Some("a/b"));
        assert_eq!(repo_of("/v2/lib/x/manifests/1"), Some("lib/x"));
        assert_eq!(repo_of("/v2/s/1-2/tags/list"), Some("s/1-2"));
        assert_eq!(repo_of("/v2/"), None);
    }
}
