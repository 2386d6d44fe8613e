//! An async bandwidth limiter over the sans-IO [`TokenBucket`].

use damselfly_swarm::TokenBucket;
use parking_lot::Mutex;

/// Limits bytes per second across every task that shares it.
#[derive(Debug)]
pub struct RateLimiter {
    bucket: Mutex<TokenBucket>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec`, with a burst of a quarter second (at least 64 KiB).
    pub fn new(bytes_per_sec: u64) -> Self {
        let burst = (bytes_per_sec / 4).max(64 << 10);
        Self {
            bucket: Mutex::new(TokenBucket::new(
                bytes_per_sec,
                burst,
                tokio::time::Instant::now().into_std(),
            )),
        }
    }

    /// Waits until `n` bytes may be sent or received.
    pub async fn acquire(&self, n: u64) {
        let now = tokio::time::Instant::now().into_std();
        let wait = self.bucket.lock().reserve(now, n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
