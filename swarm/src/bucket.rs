//! A token bucket for upload and download rate limits.

use std::time::{Duration, Instant};

const NANOS: i128 = 1_000_000_000;

/// Rate limiter: `rate` bytes per second, with bursts of up to `burst` bytes.
///
/// Pure: the caller passes `now` and sleeps for the returned duration itself. Tokens are tracked
/// in byte-nanoseconds so no fraction of a byte is lost between calls. A reservation larger than
/// what is available leaves the bucket in debt, so a piece bigger than `burst` still passes
/// (after waiting for the refill) and later callers wait for the debt to be paid off.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Bytes per second; 0 means unlimited.
    rate: u64,
    /// Maximum stored tokens in byte-nanoseconds.
    cap: i128,
    /// Current tokens in byte-nanoseconds; negative is debt.
    tokens: i128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate_bytes_per_sec == 0` disables limiting.
    pub fn new(rate_bytes_per_sec: u64, burst: u64, now: Instant) -> Self {
        let cap = i128::from(burst) * NANOS;
        Self {
            rate: rate_bytes_per_sec,
            cap,
            tokens: cap,
            last: now,
        }
    }

    /// Reserves `n` bytes and returns how long the caller must wait before sending them
    /// ([`Duration::ZERO`] if they are available now).
    ///
    /// Reservations are committed immediately: calling twice reserves twice. A `now` earlier
    /// than a previous call adds no tokens.
    pub fn reserve(&mut self, now: Instant, n: u64) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        if let Some(elapsed) = now.checked_duration_since(self.last) {
            let added = elapsed.as_nanos() as i128 * i128::from(self.rate);
            self.tokens = self.tokens.saturating_add(added).min(self.cap);
            self.last = now;
        }
        self.tokens -= i128::from(n) * NANOS;
        if self.tokens >= 0 {
            return Duration::ZERO;
        }
        // Debt in byte-ns divided by bytes/s gives ns; round up so the caller never wakes early.
        let wait_ns = (-self.tokens + i128::from(self.rate) - 1) / i128::from(self.rate);
        Duration::from_nanos(u64::try_from(wait_ns).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 500, t0);
        assert_eq!(b.reserve(t0, 500), Duration::ZERO);
        assert_eq!(b.reserve(t0, 100), Duration::from_millis(100));
        // 100 ms later the debt is paid; 250 ms more buys 250 bytes.
        let t1 = t0 + Duration::from_millis(350);
        assert_eq!(b.reserve(t1, 250), Duration::ZERO);
        assert_eq!(b.reserve(t1, 1), Duration::from_millis(1));
    }

    #[test]
    fn debt_allows_large_reservations() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1 << 20, 64 << 10, t0);
        let wait = b.reserve(t0, 4 << 20);
        // 4 MiB - 64 KiB at 1 MiB/s.
        assert_eq!(wait, Duration::from_secs_f64(4.0 - 1.0 / 16.0));
    }

    #[test]
    fn refill_caps_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 100, t0);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.reserve(later, 100), Duration::ZERO);
        assert_eq!(b.reserve(later, 50), Duration::from_millis(500));
    }

    #[test]
    fn unlimited_and_clock_going_back() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut free = TokenBucket::new(0, 0, t0);
        assert_eq!(free.reserve(t0, u64::MAX), Duration::ZERO);
        let mut b = TokenBucket::new(10, 10, t0);
        assert_eq!(b.reserve(t0, 10), Duration::ZERO);
        assert_eq!(
            b.reserve(t0 - Duration::from_secs(5), 10),
            Duration::from_secs(1)
        );
    }
}
