//! Session tokens: proof, on every sync and leave, that the caller is the peer that
//! registered under that id.
//!
//! Peers choose their ids, and an id is no secret: the supernode names every peer to others
//! as a parent. Without a proof, any member of the cluster could sync or leave as another
//! peer (report pieces it does not hold, accuse a third peer under the victim's name, take it
//! out of the swarm). So `register` answers with a session token for (task, peer id), sent
//! only to the registering peer and back only to the supernode; `sync` and `leave` must carry
//! it. A peer's piece token cannot stand in for it: that one goes to every parent it asks.
//!
//! ```text
//!   token = HMAC-SHA256(K, m)                                       32 bytes
//!   K     = HMAC-SHA256(cluster secret, "damselfly session token v1"), or random per
//!           supernode process without a secret
//!   m     = len(task id) (u32 BE) ‖ task id ‖ peer id (u64 BE) ‖ host
//! ```
//!
//! `host` is where the registration came from (`swarm::PeerHost`, as text): the id is bound
//! to it, and a registration of a live id from another host is refused, so the token of an
//! id that later moved to another host is worth nothing. A token does not expire: it is worth
//! as much as the registration it came from.

use std::{fmt, path::Path};

use ring::{
    hmac,
    rand::{SecureRandom, SystemRandom},
};

use crate::token::{SecretError, derive_key, read_secret_file};

/// Domain label of the session-token key derived from the cluster secret.
const LABEL: &[u8] = b"damselfly session token v1";

/// Bytes in a session token.
pub const SESSION_TOKEN_LEN: usize = 32;

/// Why a session token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The request carried none (a peer of an older version).
    #[error("no session token (register again)")]
    Missing,
    /// The token does not match (another peer's or task's, altered, or issued by a
    /// supernode with another key, e.g. one restarted without a cluster secret).
    #[error("session token not valid for this task and peer (register again)")]
    Invalid,
}

/// Why the random key could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system's random number generator failed")]
pub struct RandomError;

/// The key that issues and checks session tokens.
#[derive(Clone)]
pub struct SessionKey {
    key: hmac::Key,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// The key for cluster secret `secret` (surrounding ASCII whitespace ignored).
    ///
    /// # Errors
    /// [`SecretError::TooShort`] for a secret too short to resist guessing.
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

    /// A key of this process alone, for a supernode without a cluster secret: its tokens
    /// are good only with it (and only until it restarts).
    ///
    /// # Errors
    /// The system's random number generator failed.
    pub fn random() -> Result<Self, RandomError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| RandomError)?;
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    /// For a `cluster.secret_file` setting: the secret's key, or a random one when it is
    /// empty.
    ///
    /// # Errors
    /// As [`SessionKey::from_file`]; a failing random number generator is reported as an
    /// I/O error reading the secret.
    pub fn from_setting(secret_file: &Path) -> Result<Self, SecretError> {
        if secret_file.as_os_str().is_empty() {
            return Self::random().map_err(|e| SecretError::Read {
                path: "<random>".into(),
                source: std::io::Error::other(e),
            });
        }
        Self::from_file(secret_file)
    }

    fn message(task_id: &str, peer_id: u64, host: &str) -> Vec<u8> {
        let mut m = Vec::with_capacity(12 + task_id.len() + host.len());
        m.extend_from_slice(
            &u32::try_from(task_id.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        m.extend_from_slice(task_id.as_bytes());
        m.extend_from_slice(&peer_id.to_be_bytes());
        m.extend_from_slice(host.as_bytes());
        m
    }

    /// The token of `peer_id` in `task_id`, registered from `host`.
    pub fn issue(&self, task_id: &str, peer_id: u64, host: &str) -> Vec<u8> {
        hmac::sign(&self.key, &Self::message(task_id, peer_id, host))
            .as_ref()
            .to_vec()
    }

    /// Checks that `token` is `peer_id`'s in `task_id`, registered from `host` (compared in
    /// constant time).
    ///
    /// # Errors
    /// See [`SessionError`].
    pub fn verify(
        &self,
        token: &[u8],
        task_id: &str,
        peer_id: u64,
        host: &str,
    ) -> Result<(), SessionError> {
        if token.is_empty() {
            return Err(SessionError::Missing);
        }
        hmac::verify(&self.key, &Self::message(task_id, peer_id, host), token)
            .map_err(|_| SessionError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_is_good_for_its_task_and_peer_only() {
        let key = SessionKey::new(SECRET).unwrap();
        let h = "10.0.0.7";
        let t = key.issue("sha256:a", 7, h);
        assert_eq!(t.len(), SESSION_TOKEN_LEN);
        key.verify(&t, "sha256:a", 7, h).unwrap();
        let invalid = Err(SessionError::Invalid);
        assert_eq!(key.verify(&t, "sha256:a", 8, h), invalid);
        assert_eq!(key.verify(&t, "sha256:b", 7, h), invalid);
        assert_eq!(key.verify(&t, "sha256:a", 7, "10.0.0.8"), invalid);
        assert_eq!(
            key.verify(&[], "sha256:a", 7, h),
            Err(SessionError::Missing)
        );
        let mut flipped = t.clone();
        flipped[0] ^= 1;
        assert_eq!(key.verify(&flipped, "sha256:a", 7, h), invalid);
        assert_eq!(key.verify(&t[..31], "sha256:a", 7, h), invalid);
    }

    #[test]
    fn supernodes_sharing_a_secret_accept_each_others_tokens_and_others_do_not() {
        let a = SessionKey::new(SECRET).unwrap();
        let b = SessionKey::new(b"  0123456789abcdef0123456789abcdef\n").unwrap();
        b.verify(&a.issue("t", 1, "h"), "t", 1, "h").unwrap();
        let lone = SessionKey::random().unwrap();
        assert_eq!(
            lone.verify(&a.issue("t", 1, "h"), "t", 1, "h"),
            Err(SessionError::Invalid)
        );
        // The piece-token key of the same secret is another key.
        let piece = crate::TokenKey::new(SECRET)
            .unwrap()
            .issue("t", 1, u64::MAX);
        assert_eq!(
            a.verify(&piece[9..], "t", 1, "h"),
            Err(SessionError::Invalid)
        );
    }
}
