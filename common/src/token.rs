//! Piece tokens: the supernode's word, checked by a serving peer without a round trip, that
//! a requester was admitted to a task.
//!
//! The supernode admits a peer to a task at registration (for a private blob only after the
//! peer's own credentials passed the registry's access check) and hands it a token for that
//! (task, peer) pair, refreshed in every sync answer. A peer asking another peer (or the
//! supernode) for a piece or for announcements sends it; the server recomputes the MAC with
//! the cluster secret, which every supernode and node of the cluster holds.
//!
//! ```text
//!   token = version (1 byte, 1) ‖ expiry (u64 BE, Unix seconds) ‖ HMAC-SHA256(K, m)   41 bytes
//!   K     = HMAC-SHA256(cluster secret, "damselfly piece token v1")
//!   m     = version ‖ len(task id) (u32 BE) ‖ task id ‖ peer id (u64 BE) ‖ expiry (u64 BE)
//! ```
//!
//! The derived key keeps the cluster secret usable for other purposes later (each with its
//! own label). A token is a bearer credential for one (task, peer) until it expires: it
//! travels in clear over the TCP transport (QUIC encrypts it).

use std::{
    fmt,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ring::hmac;

/// The HTTP header in which a piece request to the supernode carries the requester's piece
/// token, in hex (peers carry it in the request frame).
pub const PIECE_TOKEN_HEADER: &str = "x-damselfly-piece-token";

/// The token format this build issues and accepts.
pub const TOKEN_VERSION: u8 = 1;

/// Bytes in a token.
pub const TOKEN_LEN: usize = 1 + 8 + 32;

/// Shortest cluster secret accepted, in bytes (after trimming surrounding whitespace).
pub const MIN_SECRET_LEN: usize = 16;

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// Domain label of the piece-token key derived from the cluster secret.
const LABEL: &[u8] = b"damselfly piece token v1";

/// Why a cluster secret could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("reading the cluster secret {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than a secret could be.
    #[error("the cluster secret {path} is {len} bytes; at most {MAX_SECRET_FILE} are read")]
    TooLarge {
        /// The file.
        path: String,
        /// Its length.
        len: u64,
    },
    /// The secret is too short to resist guessing.
    #[error(
        "the cluster secret is {len} bytes; it must be at least {MIN_SECRET_LEN} \
         (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        /// Its length after trimming.
        len: usize,
    },
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The request carried no token (a peer of an older version, or a supernode without
    /// a cluster secret).
    #[error("no piece token")]
    Missing,
    /// The token is not [`TOKEN_LEN`] bytes.
    #[error("malformed piece token ({0} bytes)")]
    Malformed(usize),
    /// The token is of another format version.
    #[error("piece token version {0} (this build speaks {TOKEN_VERSION})")]
    Version(u8),
    /// The token's expiry has passed.
    #[error("piece token expired {0} s ago")]
    Expired(u64),
    /// The MAC does not match: a token for another task or peer, altered, or made with
    /// another secret.
    #[error("piece token not valid for this task and peer")]
    Invalid,
}

impl TokenError {
    /// A short fixed label, for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::Version(_) => "version",
            Self::Expired(_) => "expired",
            Self::Invalid => "invalid",
        }
    }
}

/// The key that issues and checks piece tokens, derived from the cluster secret.
#[derive(Clone)]
pub struct TokenKey {
    key: hmac::Key,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenKey(<redacted>)")
    }
}

impl TokenKey {
    /// The key for cluster secret `secret` (surrounding ASCII whitespace is ignored, so a
    /// file written with a trailing newline works).
    ///
    /// # Errors
    /// [`SecretError::TooShort`] below [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, SecretError> {
        Ok(Self {
            key: derive_key(secret, LABEL)?,
        })
    }

    /// The key for the cluster secret in file `path`.
    ///
    /// # Errors
    /// The file cannot be read, is over 4 KiB, or holds too short a secret.
    pub fn from_file(path: &Path) -> Result<Self, SecretError> {
        Self::new(&read_secret_file(path)?)
    }

    /// The key for a `cluster.secret_file` setting: `None` when it is empty (tokens off),
    /// else [`TokenKey::from_file`].
    ///
    /// # Errors
    /// As [`TokenKey::from_file`].
    pub fn from_setting(secret_file: &Path) -> Result<Option<Self>, SecretError> {
        if secret_file.as_os_str().is_empty() {
            return Ok(None);
        }
        Self::from_file(secret_file).map(Some)
    }

    /// The bytes the MAC covers.
    fn message(task_id: &str, peer_id: u64, expires: u64) -> Vec<u8> {
        let mut m = Vec::with_capacity(21 + task_id.len());
        m.push(TOKEN_VERSION);
        m.extend_from_slice(
            &u32::try_from(task_id.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        m.extend_from_slice(task_id.as_bytes());
        m.extend_from_slice(&peer_id.to_be_bytes());
        m.extend_from_slice(&expires.to_be_bytes());
        m
    }

    /// A token admitting `peer_id` to `task_id` until `expires` (Unix seconds).
    pub fn issue(&self, task_id: &str, peer_id: u64, expires: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOKEN_LEN);
        out.push(TOKEN_VERSION);
        out.extend_from_slice(&expires.to_be_bytes());
        let message = Self::message(task_id, peer_id, expires);
        out.extend_from_slice(hmac::sign(&self.key, &message).as_ref());
        out
    }

    /// A token admitting `peer_id` to `task_id` for `ttl` from now.
    pub fn issue_for(&self, task_id: &str, peer_id: u64, ttl: Duration) -> Vec<u8> {
        self.issue(task_id, peer_id, unix_now().saturating_add(ttl.as_secs()))
    }

    /// Checks that `token` admits `peer_id` to `task_id` at `now` (Unix seconds); returns
    /// its expiry. The MAC is compared in constant time.
    ///
    /// # Errors
    /// See [`TokenError`].
    pub fn verify(
        &self,
        token: &[u8],
        task_id: &str,
        peer_id: u64,
        now: u64,
    ) -> Result<u64, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token[0] != TOKEN_VERSION {
            return Err(TokenError::Version(token[0]));
        }
        if token.len() != TOKEN_LEN {
            return Err(TokenError::Malformed(token.len()));
        }
        let mut be = [0u8; 8];
        be.copy_from_slice(&token[1..9]);
        let expires = u64::from_be_bytes(be);
        // The MAC first, so an expiry someone altered is reported as the forgery it is.
        let message = Self::message(task_id, peer_id, expires);
        hmac::verify(&self.key, &message, &token[9..]).map_err(|_| TokenError::Invalid)?;
        if now > expires {
            return Err(TokenError::Expired(now - expires));
        }
        Ok(expires)
    }

    /// [`TokenKey::verify`] at the current time.
    ///
    /// # Errors
    /// See [`TokenError`].
    pub fn verify_now(&self, token: &[u8], task_id: &str, peer_id: u64) -> Result<u64, TokenError> {
        self.verify(token, task_id, peer_id, unix_now())
    }
}

/// An HMAC-SHA256 key derived from cluster secret `secret` (surrounding ASCII whitespace
/// ignored) for one purpose, named by `label`: each use of the secret gets its own key.
///
/// # Errors
/// [`SecretError::TooShort`] below [`MIN_SECRET_LEN`] bytes.
pub(crate) fn derive_key(secret: &[u8], label: &[u8]) -> Result<hmac::Key, SecretError> {
    let secret = secret.trim_ascii();
    if secret.len() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort { len: secret.len() });
    }
    let root = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let derived = hmac::sign(&root, label);
    Ok(hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()))
}

/// The bytes of a cluster secret file (at most 4 KiB).
///
/// # Errors
/// The file cannot be read or is over 4 KiB.
pub(crate) fn read_secret_file(path: &Path) -> Result<Vec<u8>, SecretError> {
    let read = |source| SecretError::Read {
        path: path.display().to_string(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            path: path.display().to_string(),
            len,
        });
    }
    std::fs::read(path).map_err(read)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn key() -> TokenKey {
        TokenKey::new(SECRET).unwrap()
    }

    #[test]
    fn a_token_admits_its_task_and_peer_until_it_expires() {
        let k = key();
        let t = k.issue("sha256:aa", 7, 1_000);
        assert_eq!(t.len(), TOKEN_LEN);
        assert_eq!(k.verify(&t, "sha256:aa", 7, 999), Ok(1_000));
        assert_eq!(k.verify(&t, "sha256:aa", 7, 1_000), Ok(1_000));
        assert_eq!(
            k.verify(&t, "sha256:aa", 7, 1_030),
            Err(TokenError::Expired(30))
        );
        // Another task, another peer.
        assert_eq!(k.verify(&t, "sha256:ab", 7, 999), Err(TokenError::Invalid));
        assert_eq!(k.verify(&t, "sha256:aa", 8, 999), Err(TokenError::Invalid));
        // A key made from the same secret (other whitespace) agrees; another secret does not.
        let same = TokenKey::new(b"  0123456789abcdef0123456789abcdef\n").unwrap();
        assert_eq!(same.verify(&t, "sha256:aa", 7, 999), Ok(1_000));
        let other = TokenKey::new(b"0123456789abcdef0123456789abcdeX").unwrap();
        assert_eq!(
            other.verify(&t, "sha256:aa", 7, 999),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn tampered_truncated_and_foreign_tokens_are_refused() {
        let k = key();
        let t = k.issue("sha256:aa", 7, 1_000);
        // Every single-bit change anywhere is caught: a later expiry, a changed MAC.
        for i in 0..t.len() {
            for bit in 0..8 {
                let mut bad = t.clone();
                bad[i] ^= 1 << bit;
                let got = k.verify(&bad, "sha256:aa", 7, 999);
                assert!(got.is_err(), "byte {i} bit {bit} accepted");
                if i > 0 {
                    assert_eq!(got, Err(TokenError::Invalid), "byte {i} bit {bit}");
                }
            }
        }
        assert_eq!(k.verify(&[], "sha256:aa", 7, 0), Err(TokenError::Missing));
        assert_eq!(
            k.verify(&t[..20], "sha256:aa", 7, 0),
            Err(TokenError::Malformed(20))
        );
        let mut longer = t.clone();
        longer.push(0);
        assert_eq!(
            k.verify(&longer, "sha256:aa", 7, 0),
            Err(TokenError::Malformed(TOKEN_LEN + 1))
        );
        let mut v2 = t;
        v2[0] = 2;
        assert_eq!(
            k.verify(&v2, "sha256:aa", 7, 0),
            Err(TokenError::Version(2))
        );
        // The task id is length-prefixed: no two (task, peer) pairs share a message.
        let a = k.issue("ab", 0x0100_0000_0000_0000, 5);
        assert_eq!(k.verify(&a, "ab\u{1}", 0, 5), Err(TokenError::Invalid));
    }

    #[test]
    fn issue_for_expires_ttl_from_now_and_verify_now_accepts_it() {
        let k = key();
        let t = k.issue_for("sha256:aa", 1, Duration::from_secs(3600));
        let expires = k.verify_now(&t, "sha256:aa", 1).unwrap();
        let now = unix_now();
        assert!(
            (now + 3590..=now + 3600).contains(&expires),
            "{expires} vs {now}"
        );
        let gone = k.issue("sha256:aa", 1, now - 10);
        assert!(matches!(
            k.verify_now(&gone, "sha256:aa", 1),
            Err(TokenError::Expired(s)) if s >= 10
        ));
    }

    #[test]
    fn short_or_oversized_secrets_are_refused_with_the_reason() {
        assert!(matches!(
            TokenKey::new(b"  short secret \n"),
            Err(SecretError::TooShort { len: 12 })
        ));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").unwrap();
        let from_file = TokenKey::from_file(&path).unwrap();
        let t = key().issue("t", 1, 10);
        assert_eq!(from_file.verify(&t, "t", 1, 0), Ok(10));
        std::fs::write(&path, vec![b'a'; 5000]).unwrap();
        let e = TokenKey::from_file(&path).unwrap_err();
        assert!(matches!(e, SecretError::TooLarge { len: 5000, .. }), "{e}");
        let e = TokenKey::from_file(&dir.path().join("absent")).unwrap_err();
        assert!(e.to_string().contains("absent"), "{e}");
        assert_eq!(format!("{from_file:?}"), "TokenKey(<redacted>)");
    }
}
