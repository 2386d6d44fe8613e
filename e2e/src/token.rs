//! Registry token authentication (Docker's token spec, as distribution 2.8 verifies it): an
//! ES256 key with a self-signed certificate that the registry trusts (`rootcertbundle`), and
//! JWTs carrying `x5c` and an `access` list. Tests mint the tokens a token server (or Harbor)
//! would hand out; [`TokenServer`] also serves them at the registry's realm, as a real token
//! server would, for clients that run the whole token flow.

use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow};

use crate::stub_http::RequestHead;
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
        let access = if repo.is_empty() {
            Vec::new()
        } else {
            vec![(
                repo.to_owned(),
                actions.iter().map(|a| (*a).to_owned()).collect(),
            )]
        };
        self.token_for(&access, ttl)
    }

    /// A token granting, for each `(repository, actions)`, those actions, valid for `ttl`.
    ///
    /// # Errors
    /// Signing failed.
    pub fn token_for(&self, access: &[(String, Vec<String>)], ttl: Duration) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let access: Vec<serde_json::Value> = access
            .iter()
            .map(|(repo, actions)| {
                serde_json::json!({ "type": "repository", "name": repo, "actions": actions })
            })
            .collect();
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

/// One request the [`TokenServer`] answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The `scope` parameters, e.g. `repository:a/b:pull,push`.
    pub scopes: Vec<String>,
    /// The Basic user name sent, if any.
    pub user: Option<String>,
    /// The status answered: 200, or 401 for missing or wrong credentials.
    pub status: u16,
}

/// A token endpoint (Docker's token spec) on loopback: `GET /token?service=…&scope=…` answers
/// `{"token": …, "expires_in": 600}` granting every scope asked for, to anyone or, with
/// credentials set, only to requests carrying them as HTTP Basic (401 otherwise). Runs on a
/// thread of its own; stopped on drop. Records every request ([`TokenServer::requests`]).
#[derive(Debug)]
pub struct TokenServer {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Token lifetime handed out by [`TokenServer`].
const SERVED_TOKEN_TTL: Duration = Duration::from_secs(600);

impl TokenServer {
    /// Starts serving tokens from `issuer`; `credentials` (user, password) are required if
    /// given.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub fn start(issuer: Arc<TokenIssuer>, credentials: Option<(String, String)>) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (req_log, stop_flag) = (requests.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop_flag.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    serve_token(conn, &issuer, credentials.as_ref(), &req_log);
                }
            })?;
        Ok(Self {
            addr,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// The realm URL, `http://127.0.0.1:PORT/token`.
    pub fn url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one HTTP request on `conn`, recording it in `log` before answering (so a client
/// that has its answer finds its request recorded).
fn serve_token(
    conn: TcpStream,
    issuer: &TokenIssuer,
    credentials: Option<&(String, String)>,
    log: &Mutex<Vec<TokenRequest>>,
) -> Option<()> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let head = RequestHead::read(&mut reader).ok()??;
    let authorization = head.header("authorization");
    let target = &head.target;
    let url = reqwest::Url::parse(&format!("http://token{target}")).ok()?;
    let scopes: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "scope")
        .map(|(_, v)| v.into_owned())
        .collect();
    let sent = authorization
        .and_then(|a| a.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())));
    let allowed = credentials.is_none_or(|want| sent.as_ref() == Some(want));
    let access: Vec<(String, Vec<String>)> = scopes
        .iter()
        .filter_map(|s| {
            let rest = s.strip_prefix("repository:")?;
            let (repo, actions) = rest.rsplit_once(':')?;
            Some((
                repo.to_owned(),
                actions.split(',').map(str::to_owned).collect(),
            ))
        })
        .collect();
    let (status, body) = match (allowed, issuer.token_for(&access, SERVED_TOKEN_TTL)) {
        (false, _) => (
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"token server: wrong or missing credentials"}]}"#
                .to_owned(),
        ),
        (true, Ok(token)) => (
            200,
            serde_json::json!({"token": token, "expires_in": SERVED_TOKEN_TTL.as_secs()})
                .to_string(),
        ),
        (true, Err(_)) => (500, "{}".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Internal Server Error",
    };
    let mut conn = reader.into_inner();
    let challenge = if status == 401 {
        "WWW-Authenticate: Basic realm=\"damselfly-e2e-token\"\r\n"
    } else {
        ""
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n{challenge}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(TokenRequest {
            scopes,
            user: sent.map(|(u, _)| u),
            status,
        });
    conn.write_all(response.as_bytes()).ok()
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
