//! The driver of one resilient origin GET: attempts, waits and `Range` resumes, as decided by
//! [`crate::retry`]. The caller sees one continuous body.
//!
//! ```text
//!  start ─▶ attempt ─(fail, retryable, budget left)─▶ sleep ─▶ attempt …   ─▶ total known
//!  next  ─▶ chunk from the attempt's body (Watchdog-bounded wait) ─▶ delivered += len
//!            └─(broke / ended short / stalled / slow)─▶ sleep ─▶ attempt with
//!                 Range: bytes=<delivered>-  (If-Range: <ETag> when the first answer had one)
//!                 206 with Content-Range <delivered>-<total-1>/<total> → carry on
//!                 200 of the same length (no If-Range sent) → skip <delivered> bytes
//!                 anything else → BadResume
//! ```
//!
//! A window fetch ([`Origin::get_range`]) asks for `bytes=<start+delivered>-<end-1>` from the
//! first attempt on and takes a 206 for exactly that span, or a whole 200 body (an origin
//! that ignores `Range`) from which it keeps only the window.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
use reqwest::{
    StatusCode,
    header::{self, HeaderMap, HeaderValue},
};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{
    BodyStream, Origin, OriginError,
    client::{check_status, transport},
    retry::{FailureAction, Verdict, Watchdog, parse_retry_after},
};

/// One GET of one blob, across as many attempts as it takes (and the policy allows).
pub(crate) struct Fetch {
    origin: Origin,
    url: reqwest::Url,
    headers: HeaderMap,
    /// The bytes to deliver: the blob's length, from the first answer, or the window's.
    total: u64,
    /// Only these bytes of the blob (a window fetch), else the whole blob.
    window: Option<Window>,
    /// Bytes handed to the caller: where a resume starts.
    delivered: u64,
    /// Attempts that failed so far.
    failures: u32,
    /// A strong validator of the first answer, sent as `If-Range` on resumes.
    etag: Option<HeaderValue>,
    body: Option<Attempt>,
    rng: SmallRng,
    done: bool,
}

/// A span of a blob: `len` bytes from `start`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub(crate) start: u64,
    pub(crate) len: u64,
}

/// One attempt's open body.
struct Attempt {
    stream: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    watchdog: Watchdog,
    /// Bytes still to drop (a resume answered with the whole body).
    skip: u64,
    /// The body runs past the window (a whole-blob answer to a window fetch): what follows
    /// the window's end is dropped, not an error.
    truncate: bool,
    /// A failure already decided, reported at the next read (the chunk that revealed it
    /// was good and has been delivered).
    doomed: Option<OriginError>,
}

/// A failed attempt and what its answer asked for.
struct Failed {
    error: OriginError,
    retry_after: Option<Duration>,
}

impl From<OriginError> for Failed {
    fn from(error: OriginError) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl Fetch {
    /// Makes attempts until one answers with a usable body, or gives up.
    pub(crate) async fn start(
        origin: Origin,
        url: reqwest::Url,
        headers: HeaderMap,
        window: Option<Window>,
    ) -> Result<Self, OriginError> {
        let mut fetch = Self {
            origin,
            url,
            headers,
            total: window.map_or(0, |w| w.len),
            window,
            delivered: 0,
            failures: 0,
            etag: None,
            body: None,
            rng: SmallRng::from_os_rng(),
            done: false,
        };
        loop {
            match fetch.attempt(true).await {
                Ok(attempt) => {
                    fetch.body = Some(attempt);
                    return Ok(fetch);
                }
                Err(failed) => fetch.handle_failure(failed).await?,
            }
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    pub(crate) fn into_stream(self) -> BodyStream {
        futures::stream::unfold(self, |mut fetch| async move {
            let item = fetch.next().await?;
            Some((item, fetch))
        })
        .boxed()
    }

    /// The next chunk of the blob; an error only when the fetch gives up.
    async fn next(&mut self) -> Option<Result<Bytes, OriginError>> {
        while !self.done {
            if self.delivered == self.total {
                self.done = true;
                break;
            }
            let read = match self.body.as_mut() {
                Some(attempt) => attempt.read(self.delivered).await,
                None => match self.attempt(false).await {
                    Ok(attempt) => {
                        self.body = Some(attempt);
                        continue;
                    }
                    Err(failed) => Err(failed),
                },
            };
            let failed = match read {
                Ok(Some(chunk)) => match self.deliver(chunk) {
                    Ok(Some(chunk)) => return Some(Ok(chunk)),
                    Ok(None) => continue,
                    Err(e) => Failed::from(e),
                },
                Ok(None) => Failed::from(OriginError::Interrupted {
                    at: self.delivered,
                    reason: format!("the body ended {} bytes short", self.total - self.delivered),
                }),
                Err(failed) => failed,
            };
            self.body = None;
            if let Err(e) = self.handle_failure(failed).await {
                self.done = true;
                return Some(Err(e));
            }
        }
        None
    }

    /// Accounts for `chunk`: drops what a whole-body resume repeats, refuses excess bytes.
    fn deliver(&mut self, mut chunk: Bytes) -> Result<Option<Bytes>, OriginError> {
        if let Some(attempt) = self.body.as_mut()
            && attempt.skip > 0
        {
            let drop = attempt.skip.min(chunk.len() as u64);
            attempt.skip -= drop;
            // drop <= chunk.len(), so it fits in usize.
            chunk = chunk.slice(drop as usize..);
        }
        if chunk.is_empty() {
            return Ok(None);
        }
        if self.delivered + chunk.len() as u64 > self.total {
            if !self.body.as_ref().is_some_and(|a| a.truncate) {
                return Err(OriginError::TooLong { length: self.total });
            }
            // total - delivered < chunk.len(), so it fits in usize.
            chunk = chunk.slice(..(self.total - self.delivered) as usize);
        }
        self.delivered += chunk.len() as u64;
        Ok(Some(chunk))
    }

    /// Records a failed attempt and either waits for the next one or returns the final
    /// error.
    async fn handle_failure(&mut self, failed: Failed) -> Result<(), OriginError> {
        self.failures += 1;
        let reason = failed.error.reason();
        let retry =
            reason.is_some_and(|r| r.is_retryable()) && self.failures <= self.origin.retry.retries;
        if let (Some(observer), Some(reason)) = (&self.origin.observer, reason) {
            let action = if retry {
                FailureAction::Retried
            } else {
                FailureAction::GaveUp
            };
            observer.failure(reason, action);
        }
        if !retry {
            return Err(if self.failures > 1 {
                OriginError::GaveUp {
                    attempts: self.failures,
                    last: Box::new(failed.error),
                }
            } else {
                failed.error
            });
        }
        let jitter = self.rng.random::<f64>();
        let wait = self
            .origin
            .retry
            .delay(self.failures, failed.retry_after, jitter);
        warn!(
            origin = self.url.host_str().unwrap_or(""),
            path = self.url.path(),
            attempt = self.failures,
            reason = reason.map_or("", |r| r.label()),
            resume_at = self.delivered,
            wait_ms = wait.as_millis() as u64,
            error = %failed.error,
            "origin request failed; retrying"
        );
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Sends one request: the first (`first`), or a resume from `delivered`.
    async fn attempt(&mut self, first: bool) -> Result<Attempt, Failed> {
        let policy = &self.origin.retry;
        let mut request = self
            .origin
            .client
            .get(self.url.clone())
            .headers(self.headers.clone())
            // Pieces are hashed as they arrive; a transparently decompressed body would not
            // match the digest.
            .header(header::ACCEPT_ENCODING, "identity");
        let resume = !first && self.delivered > 0;
        if let Some(w) = self.window {
            request = request.header(
                header::RANGE,
                format!("bytes={}-{}", w.start + self.delivered, w.start + w.len - 1),
            );
        } else if resume {
            request = request.header(header::RANGE, format!("bytes={}-", self.delivered));
        }
        if resume && let Some(etag) = &self.etag {
            request = request.header(header::IF_RANGE, etag.clone());
        }
        let response = tokio::time::timeout(policy.stall_timeout, request.send())
            .await
            .map_err(|_| OriginError::Stalled(policy.stall_timeout))?
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let error = match check_status(response).await {
                Err(e) => e,
                // check_status only passes successes, and this is not one.
                Ok(_) => OriginError::Transport(format!("unexpected status {status}")),
            };
            return Err(Failed { error, retry_after });
        }
        let length = response.content_length().ok_or(OriginError::NoLength)?;
        if first {
            self.etag = response
                .headers()
                .get(header::ETAG)
                .filter(|v| !v.as_bytes().starts_with(b"W/"))
                .cloned();
        }
        if let Some(w) = self.window {
            return self.window_attempt(w, status, length, response, resume);
        }
        let mut skip = 0;
        if first {
            self.total = length;
        } else if !resume {
            // Nothing was delivered yet: a fresh start, which must be the same blob.
            if status != StatusCode::OK || length != self.total {
                return Err(self
                    .bad_resume(format!("{status} of {length} bytes"))
                    .into());
            }
        } else if status == StatusCode::PARTIAL_CONTENT {
            let want = format!("bytes {}-{}/{}", self.delivered, self.total - 1, self.total);
            let got = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if got != want || length != self.total - self.delivered {
                return Err(self
                    .bad_resume(format!("Content-Range {got:?} of {length} bytes"))
                    .into());
            }
        } else if status == StatusCode::OK && self.etag.is_none() && length == self.total {
            // The origin ignores Range: read the whole body again, keep the rest.
            debug!(
                path = self.url.path(),
                skip = self.delivered,
                "origin ignored Range"
            );
            skip = self.delivered;
        } else {
            // With If-Range, a 200 means the content changed under the same URL.
            return Err(self
                .bad_resume(format!("{status} of {length} bytes"))
                .into());
        }
        Ok(Attempt::open(response, policy.watchdog(), skip, false))
    }

    /// Checks an answer to a window fetch's request: a 206 for exactly the rest of the
    /// window, or a whole-blob 200 that reaches past it (not after an `If-Range` resume,
    /// where a 200 means the blob changed).
    fn window_attempt(
        &self,
        w: Window,
        status: StatusCode,
        length: u64,
        response: reqwest::Response,
        resume: bool,
    ) -> Result<Attempt, Failed> {
        let from = w.start + self.delivered;
        let last = w.start + w.len - 1;
        let skip = if status == StatusCode::PARTIAL_CONTENT {
            let got = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !got.starts_with(&format!("bytes {from}-{last}/")) || length != last + 1 - from {
                return Err(self
                    .bad_resume(format!("Content-Range {got:?} of {length} bytes"))
                    .into());
            }
            0
        } else if status == StatusCode::OK && length > last && !(resume && self.etag.is_some()) {
            debug!(path = self.url.path(), skip = from, "origin ignored Range");
            from
        } else {
            return Err(self
                .bad_resume(format!("{status} of {length} bytes"))
                .into());
        };
        let truncate = status == StatusCode::OK;
        Ok(Attempt::open(
            response,
            self.origin.retry.watchdog(),
            skip,
            truncate,
        ))
    }

    fn bad_resume(&self, answer: String) -> OriginError {
        OriginError::BadResume {
            offset: self.delivered,
            answer,
        }
    }
}

impl Attempt {
    /// Reads `response`'s body, dropping its first `skip` bytes.
    fn open(response: reqwest::Response, watchdog: Watchdog, skip: u64, truncate: bool) -> Self {
        Self {
            stream: response.bytes_stream().boxed(),
            watchdog,
            skip,
            truncate,
            doomed: None,
        }
    }

    /// The next chunk of this attempt's body (`None` at its end), or why it failed;
    /// `delivered` is where the blob stands, for the error.
    async fn read(&mut self, delivered: u64) -> Result<Option<Bytes>, Failed> {
        if let Some(e) = self.doomed.take() {
            return Err(e.into());
        }
        loop {
            let wait = self.watchdog.timeout();
            let started = Instant::now();
            let next = tokio::time::timeout(wait, self.stream.next()).await;
            let (item, bytes) = match next {
                Ok(Some(Ok(chunk))) => {
                    let n = chunk.len() as u64;
                    (Some(chunk), n)
                }
                Ok(Some(Err(e))) => {
                    return Err(OriginError::Interrupted {
                        at: delivered,
                        reason: crate::error_chain(&e),
                    }
                    .into());
                }
                Ok(None) => return Ok(None),
                Err(_) => (None, 0),
            };
            let waited = if item.is_some() {
                started.elapsed()
            } else {
                wait
            };
            let window = self.watchdog.window();
            match (self.watchdog.handle_wait(waited, bytes), item) {
                (Verdict::Ok, Some(chunk)) => return Ok(Some(chunk)),
                (Verdict::Ok, None) => {}
                (Verdict::Stalled, _) => return Err(OriginError::Stalled(window).into()),
                (Verdict::Slow { bytes }, chunk) => {
                    let slow = OriginError::Slow { bytes, window };
                    match chunk {
                        // The chunk is good: deliver it, fail the attempt at the next read.
                        Some(chunk) => {
                            self.doomed = Some(slow);
                            return Ok(Some(chunk));
                        }
                        None => return Err(slow.into()),
                    }
                }
            }
        }
    }
}
