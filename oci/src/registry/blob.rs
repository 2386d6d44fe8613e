//! [`BlobStream`]: a blob body that proves its digest at its end.

use std::fmt;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use damselfly_common::{Digest, Sha256Hasher};
use futures::{Stream, StreamExt};

use super::RegistryError;
use super::response::unreachable;

/// A blob being downloaded: its size (from `Content-Length`) and its body.
///
/// As a [`Stream`] it yields the body's chunks; after the last one it checks that exactly
/// `size` bytes came and that they hash to the blob's digest, and yields a final
/// [`RegistryError::DigestMismatch`] or [`RegistryError::BadResponse`] instead of ending if
/// not. A consumer that reads to the end therefore never accepts a corrupt blob.
pub struct BlobStream {
    /// Blob length in bytes.
    pub size: u64,
    stream: Pin<Box<dyn Stream<Item = Result<Bytes, RegistryError>> + Send>>,
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes, RegistryError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.stream.as_mut().poll_next(cx)
    }
}

impl BlobStream {
    /// Reads the whole (verified) blob into memory.
    ///
    /// # Errors
    /// [`RegistryError::BadResponse`] if the blob is larger than `max`; any error of the
    /// stream (transport, length, digest).
    pub async fn read_all(mut self, max: u64) -> Result<Vec<u8>, RegistryError> {
        if self.size > max {
            return Err(RegistryError::BadResponse(format!(
                "blob is {} bytes, over the limit of {max}",
                self.size
            )));
        }
        let mut out = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        while let Some(chunk) = self.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// The body as an [`AsyncRead`](tokio::io::AsyncRead); stream errors become
    /// [`io::Error`]s whose inner error is the [`RegistryError`].
    pub fn into_async_read(self) -> impl tokio::io::AsyncRead + Send + Unpin {
        tokio_util::io::StreamReader::new(self.map(|r| r.map_err(io::Error::other)))
    }
}

/// `bytes a-b/total` (or `/*`) naming exactly `range`.
pub(super) fn content_range_matches(value: &str, range: &Range<u64>) -> bool {
    let Some(rest) = value.trim().strip_prefix("bytes ") else {
        return false;
    };
    let Some((span, total)) = rest.split_once('/') else {
        return false;
    };
    let Some((a, b)) = span.split_once('-') else {
        return false;
    };
    let (Ok(a), Ok(b)) = (a.trim().parse::<u64>(), b.trim().parse::<u64>()) else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>().is_ok_and(|t| t >= range.end);
    a == range.start && b.checked_add(1) == Some(range.end) && total_ok
}

/// The body of a blob GET (`size` bytes by its `Content-Length`) as a [`BlobStream`] that
/// checks length and digest at its end.
pub(super) fn verified_stream(
    resp: reqwest::Response,
    url: String,
    size: u64,
    expected: Digest,
) -> BlobStream {
    BlobStream {
        size,
        stream: checked_body(resp, url, size, expected).boxed(),
    }
}

fn checked_body(
    resp: reqwest::Response,
    url: String,
    size: u64,
    expected: Digest,
) -> impl Stream<Item = Result<Bytes, RegistryError>> + Send {
    struct State<S> {
        inner: S,
        hasher: Sha256Hasher,
        seen: u64,
        done: bool,
    }
    let state = State {
        inner: resp.bytes_stream(),
        hasher: Sha256Hasher::new(),
        seen: 0,
        done: false,
    };
    futures::stream::unfold(state, move |mut st| {
        let url = url.clone();
        async move {
            if st.done {
                return None;
            }
            let item = match st.inner.next().await {
                Some(Ok(chunk)) => {
                    st.seen += chunk.len() as u64;
                    if st.seen > size {
                        st.done = true;
                        Err(RegistryError::BadResponse(format!(
                            "{url}: body is longer than its Content-Length ({size} bytes)"
                        )))
                    } else {
                        st.hasher.update(&chunk);
                        Ok(chunk)
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    Err(unreachable(&url, &e))
                }
                None => {
                    st.done = true;
                    if st.seen != size {
                        Err(RegistryError::BadResponse(format!(
                            "{url}: body ended after {} of {size} bytes",
                            st.seen
                        )))
                    } else {
                        let actual = std::mem::take(&mut st.hasher).finish();
                        if actual == expected {
                            return None;
                        }
                        Err(RegistryError::DigestMismatch {
                            url,
                            expected,
                            actual,
                        })
                    }
                }
            };
            Some((item, st))
        }
    })
}
