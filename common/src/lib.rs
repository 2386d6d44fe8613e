//! Small pieces every Damselfly daemon shares: the content [`Digest`], config-file loading with
//! all problems reported together, tracing set-up, and the shutdown signal.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod digest;
pub mod placement;
pub mod rate;
pub mod shutdown;
pub mod telemetry;

pub use digest::{Digest, DigestError, Sha256Hasher};
pub use rate::RateLimiter;
