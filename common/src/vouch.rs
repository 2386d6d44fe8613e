//! Vouched piece digests: the supernode's signature over a piece's digest, so that a peer
//! can take a digest relayed by another peer (with the piece it sends) instead of from the
//! supernode's own sync answers, and still never accept bytes the supernode did not vouch
//! for.
//!
//! The simulator measured the gain (`swarm-sim --peers 10000 --control-traffic`, against
//! `--no-vouched-digests`: the supernode's control bytes fall from 300 to 130 MB and the
//! flash crowd's median from 1.39 to 1.23 `T_min`; docs/benchmarks.md, "Vouched digests,
//! built"). An HMAC with the cluster secret would not do:
//! every node holds that secret, so any peer could forge a digest. Ed25519 signatures can
//! be checked by every peer with the supernode's public key and made only by the supernode.
//!
//! ```text
//!   signature = Ed25519(supernode key, m)                                         64 bytes
//!   m         = "damselfly piece digest v1" ‖ len(task id) (u32 BE) ‖ task id
//!               ‖ piece (u32 BE) ‖ sha256 (32 bytes)
//! ```
//!
//! The task id in the message keeps a signature from being replayed for another blob; the
//! piece index, for another piece of the same blob.
//!
//! The supernode publishes its public key in its registration answer and sends a
//! [`Vouch`] with every piece it serves ([`PIECE_DIGEST_HEADER`],
//! [`PIECE_SIGNATURE_HEADER`]); a peer keeps the vouch of each piece it verified and sends
//! it with every piece it serves (`PieceResponse.digest`, `.signature`).

use std::{io::Write as _, path::Path};

use ring::{
    rand::SystemRandom,
    signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey},
};

use crate::Digest;

/// Bytes in a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Bytes in a public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// Largest key file read (a PKCS#8 Ed25519 document is 83–85 bytes).
const MAX_KEY_FILE: u64 = 1024;

/// Domain label of the signed message.
const LABEL: &[u8] = b"damselfly piece digest v1";

/// HTTP header of the supernode's piece answers: the piece's sha256, hex.
pub const PIECE_DIGEST_HEADER: &str = "x-damselfly-piece-digest";

/// HTTP header of the supernode's piece answers: its signature over the digest, hex.
pub const PIECE_SIGNATURE_HEADER: &str = "x-damselfly-piece-signature";

/// A piece's digest with the supernode's signature over it, as piece answers carry it.
/// Unchecked until [`DigestVerifier::check`] accepts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vouch {
    /// The piece's sha256.
    pub digest: Digest,
    /// The supernode's signature over it.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Vouch {
    /// The vouch of a wire answer's `digest` and `signature` fields: `None` when both are
    /// empty (the sender has none) or either has the wrong length (a decoder checks lengths
    /// before this).
    #[must_use]
    pub fn from_wire(digest: &[u8], signature: &[u8]) -> Option<Self> {
        Some(Self {
            digest: Digest(digest.try_into().ok()?),
            signature: signature.try_into().ok()?,
        })
    }

    /// The vouch of the supernode's piece headers (hex): `None` without them.
    ///
    /// # Errors
    /// [`VouchError::Malformed`] when a header is there but is not hex of the right length.
    pub fn from_hex(
        digest: Option<&[u8]>,
        signature: Option<&[u8]>,
    ) -> Result<Option<Self>, VouchError> {
        let (Some(digest), Some(signature)) = (digest, signature) else {
            return if digest.is_none() && signature.is_none() {
                Ok(None)
            } else {
                Err(VouchError::Malformed)
            };
        };
        let digest = hex::decode(digest).map_err(|_| VouchError::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| VouchError::Malformed)?;
        Self::from_wire(&digest, &signature)
            .map(Some)
            .ok_or(VouchError::Malformed)
    }
}

/// Why a key could not be loaded or made, or a signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum VouchError {
    /// The key file could not be read or written.
    #[error("signing key {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("signing key {path} is not an Ed25519 PKCS#8 key")]
    BadKey {
        /// The file.
        path: String,
    },
    /// The system's random source failed.
    #[error("generating a signing key failed")]
    Generate,
    /// A public key of the wrong length.
    #[error("a supernode public key is {PUBLIC_KEY_LEN} bytes, not {0}")]
    PublicKeyLength(usize),
    /// A digest or signature of the wrong form.
    #[error("a vouched digest must be 32 bytes with a 64-byte signature")]
    Malformed,
    /// The signature does not match (forged, for another task or piece, or another key).
    #[error("the digest of piece {piece} is not vouched for by the supernode")]
    NotVouched {
        /// The piece.
        piece: u32,
    },
}

/// The supernode's signing key.
pub struct DigestSigner {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for DigestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestSigner")
            .field("public_key", &hex::encode(self.public_key()))
            .finish_non_exhaustive()
    }
}

impl DigestSigner {
    /// A new random key, kept in memory only.
    ///
    /// # Errors
    /// [`VouchError::Generate`] if the random source fails.
    pub fn generate() -> Result<Self, VouchError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| VouchError::Generate)?;
        let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| VouchError::Generate)?;
        Ok(Self { key })
    }

    /// The key in `path` (PKCS#8), or a new one written there (mode 0600, written to a
    /// temporary file and renamed, so a crash leaves no half key) when the file does not
    /// exist. A restarted supernode keeps its key, so digests it signed before stay valid.
    ///
    /// # Errors
    /// [`VouchError::Io`] when the file cannot be read or written, [`VouchError::BadKey`]
    /// when it holds something else.
    pub fn load_or_create(path: &Path) -> Result<Self, VouchError> {
        let io = |source| VouchError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() > MAX_KEY_FILE => {
                return Err(VouchError::BadKey {
                    path: path.display().to_string(),
                });
            }
            Ok(_) => {
                let doc = std::fs::read(path).map_err(io)?;
                let key = Ed25519KeyPair::from_pkcs8(&doc).map_err(|_| VouchError::BadKey {
                    path: path.display().to_string(),
                })?;
                return Ok(Self { key });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| VouchError::Generate)?;
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp_name);
        // A leftover from a crash before the rename holds nothing anyone relies on.
        let _ = std::fs::remove_file(&tmp);
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?
        };
        file.write_all(doc.as_ref()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| VouchError::Generate)?;
        Ok(Self { key })
    }

    /// The public key peers check signatures with.
    #[must_use]
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.key.public_key().as_ref());
        out
    }

    /// The signature vouching that piece `piece` of `task_id` has `digest`.
    #[must_use]
    pub fn sign(&self, task_id: &str, piece: u32, digest: &Digest) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.key.sign(&message(task_id, piece, digest)).as_ref());
        out
    }

    /// [`sign`](Self::sign) as a [`Vouch`].
    #[must_use]
    pub fn vouch(&self, task_id: &str, piece: u32, digest: Digest) -> Vouch {
        Vouch {
            digest,
            signature: self.sign(task_id, piece, &digest),
        }
    }
}

/// A supernode's public key, to check vouched digests with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestVerifier {
    key: [u8; PUBLIC_KEY_LEN],
}

impl DigestVerifier {
    /// The verifier for the public key `key` (as [`DigestSigner::public_key`] gives it, e.g.
    /// from the supernode's registration answer).
    ///
    /// # Errors
    /// [`VouchError::PublicKeyLength`] for a key of another length.
    pub fn new(key: &[u8]) -> Result<Self, VouchError> {
        let key: [u8; PUBLIC_KEY_LEN] = key
            .try_into()
            .map_err(|_| VouchError::PublicKeyLength(key.len()))?;
        Ok(Self { key })
    }

    /// Whether `signature` vouches that piece `piece` of `task_id` has `digest`.
    ///
    /// # Errors
    /// [`VouchError::NotVouched`] when it does not (any length, any other key, task, piece
    /// or digest).
    pub fn verify(
        &self,
        task_id: &str,
        piece: u32,
        digest: &Digest,
        signature: &[u8],
    ) -> Result<(), VouchError> {
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(&message(task_id, piece, digest), signature)
            .map_err(|_| VouchError::NotVouched { piece })
    }

    /// [`verify`](Self::verify) for a [`Vouch`].
    ///
    /// # Errors
    /// [`VouchError::NotVouched`].
    pub fn check(&self, task_id: &str, piece: u32, vouch: &Vouch) -> Result<(), VouchError> {
        self.verify(task_id, piece, &vouch.digest, &vouch.signature)
    }
}

/// The sha256 of a blob's piece digests in order (32 bytes each, concatenated): what the
/// supernode answers an end-of-download confirmation with (`SyncResponse.digests_sha256`)
/// and the peer compares with the digests it verified against.
#[must_use]
pub fn digests_sha256(digests: &[[u8; 32]]) -> Digest {
    let mut h = crate::Sha256Hasher::new();
    for d in digests {
        h.update(d);
    }
    h.finish()
}

/// The bytes a signature covers.
fn message(task_id: &str, piece: u32, digest: &Digest) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL.len() + 4 + task_id.len() + 4 + 32);
    m.extend_from_slice(LABEL);
    // A task id is a digest string or a URL hash, far below 4 GiB.
    m.extend_from_slice(
        &u32::try_from(task_id.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    m.extend_from_slice(task_id.as_bytes());
    m.extend_from_slice(&piece.to_be_bytes());
    m.extend_from_slice(&digest.0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_digest_verifies_and_nothing_else_does() {
        let signer = DigestSigner::generate().unwrap();
        let verifier = DigestVerifier::new(&signer.public_key()).unwrap();
        let d = Digest::of(b"piece 3");
        let sig = signer.sign("sha256:t", 3, &d);
        verifier.verify("sha256:t", 3, &d, &sig).unwrap();

        let other = DigestSigner::generate().unwrap();
        let mut flipped = sig;
        flipped[10] ^= 1;
        let refused: [(&str, u32, Digest, Vec<u8>); 6] = [
            ("sha256:u", 3, d, sig.to_vec()),                    // another task
            ("sha256:t", 4, d, sig.to_vec()),                    // another piece
            ("sha256:t", 3, Digest::of(b"other"), sig.to_vec()), // another digest
            ("sha256:t", 3, d, other.sign("sha256:t", 3, &d).to_vec()), // another key
            ("sha256:t", 3, d, flipped.to_vec()),                // a flipped bit
            ("sha256:t", 3, d, sig[..63].to_vec()),              // cut short
        ];
        for (i, (task, piece, digest, sig)) in refused.iter().enumerate() {
            assert!(
                matches!(
                    verifier.verify(task, *piece, digest, sig),
                    Err(VouchError::NotVouched { piece: p }) if p == *piece
                ),
                "case {i} was accepted"
            );
        }
        assert!(matches!(
            DigestVerifier::new(&[0u8; 31]),
            Err(VouchError::PublicKeyLength(31))
        ));
    }

    #[test]
    fn vouches_come_from_the_wire_whole_or_not_at_all() {
        let signer = DigestSigner::generate().unwrap();
        let v = signer.vouch("t", 1, Digest::of(b"p"));
        assert_eq!(Vouch::from_wire(&v.digest.0, &v.signature), Some(v));
        assert_eq!(Vouch::from_wire(&[], &[]), None);
        assert_eq!(Vouch::from_wire(&v.digest.0, &v.signature[1..]), None);
        let (d, s) = (hex::encode(v.digest.0), hex::encode(v.signature));
        assert_eq!(
            Vouch::from_hex(Some(d.as_bytes()), Some(s.as_bytes())).unwrap(),
            Some(v)
        );
        assert_eq!(Vouch::from_hex(None, None).unwrap(), None);
        for (d, s) in [
            (Some(d.as_bytes()), None),
            (Some(b"zz".as_slice()), Some(s.as_bytes())),
            (Some(&d.as_bytes()[2..]), Some(s.as_bytes())),
        ] {
            assert!(matches!(Vouch::from_hex(d, s), Err(VouchError::Malformed)));
        }
        let verifier = DigestVerifier::new(&signer.public_key()).unwrap();
        verifier.check("t", 1, &v).unwrap();
        assert!(verifier.check("t", 2, &v).is_err());
    }

    #[test]
    fn a_key_file_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let first = DigestSigner::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = DigestSigner::load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        // What the first one signed, the reloaded key's verifier accepts.
        let d = Digest::of(b"x");
        DigestVerifier::new(&again.public_key())
            .unwrap()
            .verify("t", 0, &d, &first.sign("t", 0, &d))
            .unwrap();

        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            DigestSigner::load_or_create(&path),
            Err(VouchError::BadKey { .. })
        ));
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"not a key",
            "left as it was"
        );
    }
}
