//! How an origin fetch survives a failing origin: which failures are retried, how long to wait
//! before the next attempt, and when a body that is still open counts as stalled. No I/O and
//! no clock: the driver ([`crate::Origin::get`]) passes the time waited and the bytes seen.
//!
//! ```text
//!  attempt ─▶ status 5xx / 429 / 408, connect error ──┐
//!     │       body broke, ended short, stalled, slow ──┤ failures < retries?
//!     │                                                ├─ yes: wait Backoff (jittered, or the
//!     │                                                │       capped Retry-After), resume
//!     │                                                │       with Range: bytes=<delivered>-
//!     ▼                                                └─ no:  give up with the last error
//!  chunks ─▶ Watchdog.handle_wait(waited, bytes)
//! ```
//!
//! [`FailureReason`] is the one definition of why an origin request failed, used for the
//! metric labels of both daemons (`origin_failures_total{reason, action}`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use std::time::{Duration, SystemTime};

use bytesize::ByteSize;
use damselfly_common::config::ConfigError;
use serde::{Deserialize, Serialize};

/// Retries and the stall watchdog of origin blob fetches: the `[origin.retry]` section of the
/// supernode's config and `[upstream.retry]` of dfdaemon's.
///
/// Worst case before a failing origin is given up: `retries` waits of at most
/// `max(backoff_cap, retry_after_cap)` each, plus `retries + 1` attempts that each wait at
/// most `stall_timeout` for an answer (connecting included). A registration waits for the first attempt that
/// answers, so keep that under the peers' 60 s registration timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Further attempts after the first one fails (a 5xx, 429 or 408 answer, an unreachable
    /// origin, a body that broke, stalled or trickled). Each fetch has this budget once, not
    /// per failure. `0` turns retrying off. Default 4.
    pub retries: u32,
    /// Wait before the first retry; each further one doubles it, up to `backoff_cap`. The
    /// actual wait is drawn uniformly from the upper half (jitter, so that many fetches
    /// failing together do not return together). Default 250 ms.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Longest backoff wait. Default 4 s.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Longest wait a `Retry-After` header (seconds or an HTTP date, on any retried answer)
    /// can ask for; a longer one is cut to this. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub retry_after_cap: Duration,
    /// The watchdog: an origin that sends no byte for this long (response headers included)
    /// is abandoned and the fetch resumed on a new connection. Replaces the 60 s read
    /// timeout. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Slowest accepted body rate, bytes per second, measured over each `stall_timeout`
    /// window: an origin that trickles below it is treated as stalled and the fetch resumed
    /// on a new connection. `0 B` accepts any rate that is not silence. Default 16 KiB.
    pub min_rate: ByteSize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 4,
            backoff_base: Duration::from_millis(250),
            backoff_cap: Duration::from_secs(4),
            retry_after_cap: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(5),
            min_rate: ByteSize::kib(16),
        }
    }
}

impl RetryPolicy {
    /// No retries, and a watchdog that only catches a minute of silence: the behaviour
    /// before retries existed, for callers that retry themselves.
    pub fn none() -> Self {
        Self {
            retries: 0,
            stall_timeout: Duration::from_secs(60),
            min_rate: ByteSize::b(0),
            ..Self::default()
        }
    }

    /// Appends a [`ConfigError`] for each unusable value, keys prefixed with `section`.
    pub fn validate(&self, section: &str, errs: &mut Vec<ConfigError>) {
        if self.retries > 100 {
            errs.push(ConfigError::new(
                format!("{section}.retries"),
                "must be at most 100",
            ));
        }
        if self.backoff_base.is_zero() || self.backoff_base > self.backoff_cap {
            errs.push(ConfigError::new(
                format!("{section}.backoff_base"),
                format!(
                    "need 0 < backoff_base ({:?}) <= backoff_cap ({:?})",
                    self.backoff_base, self.backoff_cap
                ),
            ));
        }
        if self.stall_timeout < Duration::from_millis(100) {
            errs.push(ConfigError::new(
                format!("{section}.stall_timeout"),
                "must be >= 100ms",
            ));
        }
    }

    /// The wait before the retry that follows failure number `failures` (1 for the first),
    /// given the answer's `Retry-After` (already parsed) and `jitter`, a uniform draw from
    /// `[0, 1)`.
    ///
    /// Backoff: `min(backoff_cap, backoff_base × 2^(failures−1))`, of which the upper half is
    /// jittered. A `Retry-After` is honoured, cut to `retry_after_cap`, and never shortened
    /// by the jitter: the wait is the longer of the two.
    pub fn delay(&self, failures: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let shift = failures.saturating_sub(1).min(31);
        let full = self
            .backoff_base
            .saturating_mul(1u32 << shift)
            .min(self.backoff_cap);
        let jitter = jitter.clamp(0.0, 1.0);
        let backoff = full / 2 + (full / 2).mul_f64(jitter);
        match retry_after {
            Some(asked) => backoff.max(asked.min(self.retry_after_cap)),
            None => backoff,
        }
    }

    /// The watchdog for one attempt's body.
    pub fn watchdog(&self) -> Watchdog {
        Watchdog {
            window: self.stall_timeout,
            min_bytes: (self.min_rate.as_u64() as f64 * self.stall_timeout.as_secs_f64()) as u64,
            waited: Duration::ZERO,
            silent: Duration::ZERO,
            bytes: 0,
        }
    }
}

/// Why an origin request failed: the `reason` label of both daemons'
/// `origin_failures_total`. Bounded, and defined here once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The origin could not be reached (DNS, connect, TLS) or closed before answering.
    Unreachable,
    /// It answered 5xx.
    ServerError,
    /// It answered 429 (too many requests) or 408 (request timeout).
    Throttled,
    /// It refused with another 4xx (401, 403, 404…); never retried.
    Refused,
    /// The connection broke, or the body ended, before the whole blob arrived.
    Interrupted,
    /// No byte (or no response) for `stall_timeout`.
    Stalled,
    /// Fewer bytes than `min_rate` allows over a `stall_timeout` window.
    Slow,
    /// An unusable answer: no `Content-Length`, more bytes than announced, or a resumed
    /// request answered with another range or another length.
    BadResponse,
    /// The whole body does not hash to the blob's digest.
    DigestMismatch,
}

impl FailureReason {
    /// Every reason, for tests and documentation.
    pub const ALL: [Self; 9] = [
        Self::Unreachable,
        Self::ServerError,
        Self::Throttled,
        Self::Refused,
        Self::Interrupted,
        Self::Stalled,
        Self::Slow,
        Self::BadResponse,
        Self::DigestMismatch,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::ServerError => "server_error",
            Self::Throttled => "throttled",
            Self::Refused => "refused",
            Self::Interrupted => "interrupted",
            Self::Stalled => "stalled",
            Self::Slow => "slow",
            Self::BadResponse => "bad_response",
            Self::DigestMismatch => "digest_mismatch",
        }
    }

    /// The reason for an HTTP status that is not a success.
    pub fn of_status(status: u16) -> Self {
        match status {
            408 | 429 => Self::Throttled,
            500..=599 => Self::ServerError,
            _ => Self::Refused,
        }
    }

    /// Whether another attempt may succeed where this one failed. A refusal (the
    /// requester's credentials, a missing blob) and a digest mismatch (the fetcher's caller
    /// decides) are final; everything else is the origin or the path to it misbehaving.
    pub fn is_retryable(self) -> bool {
        !matches!(self, Self::Refused | Self::DigestMismatch)
    }
}

/// What became of a failed attempt: the `action` label of `origin_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureAction {
    /// Another attempt follows.
    Retried,
    /// The fetch failed with it.
    GaveUp,
}

impl FailureAction {
    /// Every action.
    pub const ALL: [Self; 2] = [Self::Retried, Self::GaveUp];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Retried => "retried",
            Self::GaveUp => "gave_up",
        }
    }
}

/// Told about every failed origin attempt, e.g. to count it in a daemon's metrics.
pub trait OriginObserver: Send + Sync + std::fmt::Debug {
    /// An attempt failed for `reason`; `action` says whether the fetch goes on.
    fn failure(&self, reason: FailureReason, action: FailureAction);
}

/// Labels of `origin_failures_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OriginFailureLabels {
    /// [`FailureReason::label`].
    pub reason: &'static str,
    /// [`FailureAction::label`]: `retried` or `gave_up`.
    pub action: &'static str,
}

/// `origin_failures_total{reason, action}`, the one definition both daemons export: every
/// (reason, action) exists from the start at 0, so rates and alerts see zeros rather than no
/// series (18 series: the labels are bounded). Cheap to clone; clones count together.
#[derive(Clone, Debug)]
pub struct OriginFailures(Family<OriginFailureLabels, Counter>);

impl Default for OriginFailures {
    fn default() -> Self {
        let family = Family::default();
        for reason in FailureReason::ALL {
            for action in FailureAction::ALL {
                drop(family.get_or_create(&OriginFailureLabels {
                    reason: reason.label(),
                    action: action.label(),
                }));
            }
        }
        Self(family)
    }
}

impl OriginFailures {
    /// The counter family, to register under a daemon's prefix.
    pub fn family(&self) -> Family<OriginFailureLabels, Counter> {
        self.0.clone()
    }
}

impl OriginObserver for OriginFailures {
    fn failure(&self, reason: FailureReason, action: FailureAction) {
        self.0
            .get_or_create(&OriginFailureLabels {
                reason: reason.label(),
                action: action.label(),
            })
            .inc();
    }
}

/// The wait a `Retry-After` value asks for: delta-seconds, or an HTTP date relative to
/// `now` (a date in the past is no wait). `None` if it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only; saturate rather than overflow on absurd values (capped later).
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The stall and trickle watchdog of one attempt's body.
///
/// Time counts only while the fetcher waits for the origin (a slow disk on the caller's side
/// is not the origin's fault). Call [`Watchdog::timeout`] before each wait, then
/// [`Watchdog::handle_wait`] with how long it waited and how many bytes arrived (0 when the
/// wait timed out).
#[derive(Debug, Clone)]
pub struct Watchdog {
    window: Duration,
    min_bytes: u64,
    /// Waiting time in the current window.
    waited: Duration,
    /// Waiting time since the last byte.
    silent: Duration,
    /// Bytes in the current window.
    bytes: u64,
}

/// The watchdog's verdict after a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep reading.
    Ok,
    /// Nothing arrived for the whole window.
    Stalled,
    /// Bytes arrived, too few for the window.
    Slow {
        /// Bytes in the window.
        bytes: u64,
    },
}

impl Watchdog {
    /// The window: the stall timeout.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Longest the next wait may last before the watchdog must judge.
    pub fn timeout(&self) -> Duration {
        self.window
            .saturating_sub(self.waited)
            .min(self.window.saturating_sub(self.silent))
    }

    /// Records a wait of `waited` that brought `bytes`.
    pub fn handle_wait(&mut self, waited: Duration, bytes: u64) -> Verdict {
        self.waited += waited;
        self.bytes += bytes;
        if bytes > 0 {
            self.silent = Duration::ZERO;
        } else {
            self.silent += waited;
            if self.silent >= self.window {
                return Verdict::Stalled;
            }
        }
        if self.waited < self.window {
            return Verdict::Ok;
        }
        let bytes = self.bytes;
        self.waited = Duration::ZERO;
        self.bytes = 0;
        if bytes < self.min_bytes {
            Verdict::Slow { bytes }
        } else {
            Verdict::Ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1, None, 0.0), Duration::from_millis(125));
        assert_eq!(p.delay(1, None, 1.0), Duration::from_millis(250));
        assert_eq!(p.delay(2, None, 1.0), Duration::from_millis(500));
        assert_eq!(p.delay(3, None, 0.5), Duration::from_millis(750));
        assert_eq!(p.delay(10, None, 1.0), Duration::from_secs(4));
        assert_eq!(p.delay(u32::MAX, None, 0.0), Duration::from_secs(2));
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(10)
        );
        // A Retry-After shorter than the backoff does not shorten it.
        assert_eq!(
            p.delay(10, Some(Duration::ZERO), 1.0),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        // RFC 9110's example date, 08:49:37, is 784111777.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(5)
            ),
            Some(Duration::ZERO)
        );
        for bad in ["", "-1", "1.5", "soon", "Sun, 06 Nov 1994"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn statuses_map_to_reasons_and_only_origin_faults_retry() {
        assert_eq!(FailureReason::of_status(503), FailureReason::ServerError);
        assert_eq!(FailureReason::of_status(500), FailureReason::ServerError);
        assert_eq!(FailureReason::of_status(429), FailureReason::Throttled);
        assert_eq!(FailureReason::of_status(408), FailureReason::Throttled);
        assert_eq!(FailureReason::of_status(404), FailureReason::Refused);
        assert_eq!(FailureReason::of_status(401), FailureReason::Refused);
        assert!(!FailureReason::Refused.is_retryable());
        assert!(!FailureReason::DigestMismatch.is_retryable());
        assert!(FailureReason::Stalled.is_retryable());
        let labels: std::collections::HashSet<_> =
            FailureReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), FailureReason::ALL.len());
    }

    #[test]
    fn watchdog_catches_silence_within_one_window() {
        let p = RetryPolicy {
            stall_timeout: Duration::from_secs(5),
            ..RetryPolicy::default()
        };
        let mut w = p.watchdog();
        // 4.9 s of steady bytes, then silence: the stall is called 5 s after the last byte,
        // not at the end of the next window.
        for _ in 0..49 {
            assert_eq!(
                w.handle_wait(Duration::from_millis(100), 100_000),
                Verdict::Ok
            );
        }
        assert_eq!(w.timeout(), Duration::from_millis(100));
        assert_eq!(w.handle_wait(Duration::from_millis(100), 0), Verdict::Ok);
        assert_eq!(w.timeout(), Duration::from_millis(4900));
        assert_eq!(
            w.handle_wait(Duration::from_millis(4900), 0),
            Verdict::Stalled
        );
    }

    #[test]
    fn watchdog_catches_a_trickle_and_accepts_a_slow_but_sufficient_rate() {
        let p = RetryPolicy {
            stall_timeout: Duration::from_secs(2),
            min_rate: ByteSize::kib(16),
            ..RetryPolicy::default()
        };
        let mut w = p.watchdog();
        // 10 KiB/s in 100 ms waits: 20 KiB in the 2 s window, under 32 KiB.
        let mut verdicts = Vec::new();
        for _ in 0..20 {
            verdicts.push(w.handle_wait(Duration::from_millis(100), 1024));
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Slow { bytes: 20 * 1024 }));
        assert!(verdicts[..19].iter().all(|v| *v == Verdict::Ok));
        // 20 KiB/s passes, window after window.
        let mut w = p.watchdog();
        for _ in 0..100 {
            assert_eq!(w.handle_wait(Duration::from_millis(100), 2048), Verdict::Ok);
        }
        // With min_rate 0 only silence counts.
        let mut w = RetryPolicy {
            min_rate: ByteSize::b(0),
            ..p
        }
        .watchdog();
        for _ in 0..100 {
            assert_eq!(w.handle_wait(Duration::from_millis(1900), 1), Verdict::Ok);
        }
    }

    #[test]
    fn validation_names_each_bad_key() {
        let mut errs = Vec::new();
        RetryPolicy {
            retries: 1000,
            backoff_base: Duration::from_secs(9),
            stall_timeout: Duration::ZERO,
            ..RetryPolicy::default()
        }
        .validate("origin.retry", &mut errs);
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "origin.retry.retries",
                "origin.retry.backoff_base",
                "origin.retry.stall_timeout"
            ]
        );
        let mut errs = Vec::new();
        RetryPolicy::default().validate("x", &mut errs);
        assert!(errs.is_empty());
    }
}
