//! Small pieces every Damselfly daemon shares: the content [`Digest`], config-file loading with
//! all problems reported together, registry allow lists ([`allow`]), tracing set-up, disk space
//! ([`disk`]), the shutdown signal, and the bounded accept loop of the HTTP listeners ([`server`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod allow;
pub mod config;
pub mod control;
pub mod digest;
pub mod disk;
pub mod listen;
pub mod placement;
pub mod rate;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod telemetry;
pub mod token;
pub mod vouch;

pub use control::{ControlAuthError, ControlKey};
pub use digest::{Digest, DigestError, Sha256Hasher};
pub use rate::RateLimiter;
pub use session::{SessionError, SessionKey};
pub use token::{TokenError, TokenKey};
