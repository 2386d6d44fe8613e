//! [`RegistryError`]: every way a registry operation fails.

use std::io;
use std::path::PathBuf;

use damselfly_common::Digest;

/// Why a registry request failed. Every message names the URL (or the reference) involved.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401: no credentials, wrong credentials, or a token the registry refused.
    #[error("{url}: 401 Unauthorized: {message}")]
    Unauthorized {
        /// The request (or token endpoint) URL.
        url: String,
        /// The registry's message, and whether credentials were sent.
        message: String,
    },
    /// 403: authenticated but not allowed.
    #[error("{url}: 403 Forbidden: {message}")]
    Denied {
        /// The request URL.
        url: String,
        /// The registry's message.
        message: String,
    },
    /// 404: no such repository, manifest or blob.
    #[error("{url}: 404 Not Found: {message}")]
    NotFound {
        /// The request URL.
        url: String,
        /// The registry's message (`manifest unknown (MANIFEST_UNKNOWN)`…).
        message: String,
    },
    /// Any other unexpected status.
    #[error("{url}: answered {status}: {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's message, or the start of the body.
        message: String,
    },
    /// The registry (or mirror, or token endpoint) could not be reached, or the connection
    /// broke or timed out. The text names the URL and the cause chain.
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// The answer breaks the protocol: missing `Location`, wrong `Content-Range`, a body of
    /// the wrong length, an oversized manifest…
    #[error("bad response: {0}")]
    BadResponse(String),
    /// An image reference that cannot be parsed or used for the operation.
    #[error("invalid image reference {0}")]
    BadReference(String),
    /// Content that does not hash to the digest it was fetched by.
    #[error("{url}: content does not match its digest {expected}: it hashes to {actual}")]
    DigestMismatch {
        /// The request URL.
        url: String,
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A local file could not be read (push).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Bad client settings: unreadable CA file, malformed `via` URL, unreadable auth file.
    #[error("registry client configuration: {0}")]
    Config(String),
}
