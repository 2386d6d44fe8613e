//! The Damselfly P2P download engine.
//!
//! An [`Engine`] is one peer: a piece server ([`server`]) that shares what this process holds
//! over TCP ([`tcp`], pipelined) and QUIC ([`quic`]) on one port number, a [`fetch::Fetcher`]
//! that pulls pieces from parents over the configured [`fetch::Transport`], a
//! [`supernode::SupernodeClient`],
//! and the download driver ([`engine`]) that connects them to the sans-IO
//! [`damselfly_swarm::Picker`]. Every piece is checked against the sha256 the supernode
//! published before it is written or served; the whole output is checked against its digest
//! before it is renamed into place ([`output`]).
//!
//! The `dfget` binary is a thin CLI over [`Engine::download`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod announce;
pub mod engine;
pub mod fetch;
pub mod output;
pub mod quic;
pub mod relay;
pub mod report;
pub mod server;
pub mod supernode;
pub mod tcp;

pub use engine::{DownloadError, DownloadRequest, Engine, EngineConfig};
pub use fetch::Transport;
pub use report::{
    BackSource, FallbackReason, NoProgress, ParentBytes, Progress, Report, SupernodeCopy, Via,
    WholeFileCheck,
};
pub use server::Fault;
