//! What a download did: where its bytes came from and how long it took.

use std::{fs::File, ops::Range, sync::Arc, time::Duration};

/// The outcome of one download.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// The task key (`sha256:<hex>` for blobs).
    pub task_id: String,
    /// Content length.
    pub bytes: u64,
    /// Wall time from start to the output in place.
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// Of `elapsed`, the time spent after the last piece waiting for the whole-file digest
    /// (the end-to-end check still catching up with the pieces).
    #[serde(with = "secs")]
    pub digest_wait: Duration,
    /// Of `elapsed`, the time spent making the output durable (`fsync`) and renaming it.
    #[serde(with = "secs")]
    pub commit_time: Duration,
    /// Verified bytes received from other peers.
    pub from_peers: u64,
    /// Verified bytes received from the supernode.
    pub from_supernode: u64,
    /// Bytes received from the origin directly (back to source).
    pub from_origin: u64,
    /// Pieces that failed verification (and were fetched again elsewhere).
    pub corrupt_pieces: u32,
    /// Distinct peers whose pieces failed verification.
    pub liars: Vec<u64>,
    /// Parents whose announcements this download subscribed to and received (their
    /// bitfield arrived); 0 with announcements off or on the QUIC transport.
    pub announcing_parents: u32,
    /// Times the download moved to the next supernode in the blob's placement order
    /// because the one it was registered with was lost (it kept the pieces it held).
    pub supernode_takeovers: u32,
    /// Whether the download went back to the origin, and why.
    pub back_source: Option<BackSource>,
    /// The supernode the swarm download ended with (`host:port`), if it used the swarm.
    pub supernode: Option<String>,
    /// Where the supernode's own copy stood when this download registered (`None` back
    /// to source, or from a supernode that does not say).
    pub supernode_copy: Option<SupernodeCopy>,
    /// The parents whose pieces this download kept, with their verified bytes, most first.
    pub parents: Vec<ParentBytes>,
    /// The sha256 of the output.
    pub digest: String,
    /// How the output was matched to `digest`.
    pub whole_file_check: WholeFileCheck,
    /// Piece size of a swarm download (0 back to source).
    #[serde(skip)]
    pub piece_size: u32,
    /// The sha256 of every piece of a swarm download, each matched by the bytes written
    /// (empty back to source), so a cache can record them without hashing the file again.
    #[serde(skip)]
    pub piece_digests: Vec<[u8; 32]>,
}

/// Why a download went to the origin instead of the swarm. [`FallbackReason::label`] is
/// the `reason` label of dfdaemon's `p2p_fallbacks_total`, defined here where the decision
/// is made, so no caller matches on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// No supernode is configured.
    NoSupernode,
    /// No supernode answered the registration.
    SupernodeUnreachable,
    /// The supernode went silent mid-download, or forgot the task.
    SupernodeLost,
    /// The supernode could not reach the origin (network, DNS, a CA it does not trust).
    SupernodeOriginUnreachable,
    /// The supernode has no room for the blob (its disk or cache is full).
    SupernodeNoSpace,
}

impl FallbackReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoSupernode => "no_supernode",
            Self::SupernodeUnreachable => "supernode_unreachable",
            Self::SupernodeLost => "supernode_lost",
            Self::SupernodeOriginUnreachable => "supernode_origin_unreachable",
            Self::SupernodeNoSpace => "supernode_no_space",
        }
    }
}

/// A back to source: why, and the details for people.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackSource {
    /// Why.
    pub reason: FallbackReason,
    /// What happened, e.g. `supernode unreachable (127.0.0.1:8002: connection refused)`.
    pub detail: String,
}

impl std::fmt::Display for BackSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Verified bytes one parent supplied to a download.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParentBytes {
    /// The parent's piece address (`host:port`).
    pub addr: String,
    /// Bytes of pieces it sent that this download kept.
    pub bytes: u64,
}

/// Where a supernode's copy of a blob stood when a download registered with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SupernodeCopy {
    /// It held the whole blob: this pull cost the registry nothing.
    Stored,
    /// Its fetch from the registry was under way, started by an earlier pull.
    Fetching,
    /// This download's registration started its fetch from the registry.
    Started,
}

impl SupernodeCopy {
    /// `stored`, `fetching`, `started`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Stored => "stored",
            Self::Fetching => "fetching",
            Self::Started => "started",
        }
    }

    /// From the wire (`None` for a supernode that does not say).
    pub fn from_wire(copy: damselfly_proto::SupernodeCopy) -> Option<Self> {
        match copy {
            damselfly_proto::SupernodeCopy::Stored => Some(Self::Stored),
            damselfly_proto::SupernodeCopy::Fetching => Some(Self::Fetching),
            damselfly_proto::SupernodeCopy::Started => Some(Self::Started),
            damselfly_proto::SupernodeCopy::Unspecified => None,
        }
    }
}

/// The way a download takes, told to its [`Progress`] before the first byte is fetched
/// (and again if the download leaves the swarm for the origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// Through the swarm, registered with this supernode (`host:port`).
    Swarm {
        /// The supernode.
        supernode: String,
        /// Where its copy stood, if it said.
        copy: Option<SupernodeCopy>,
    },
    /// Straight from the origin, and why.
    Origin(BackSource),
}

/// How a download's output was matched to its digest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WholeFileCheck {
    /// The engine hashed the whole output (beside the download, or at its end).
    #[default]
    Hashed,
    /// Every piece matched the supernode's piece digests, and the supernode, whose own
    /// copy of the blob matched the digest, confirmed those digests at the end.
    Supernode,
}

mod secs {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Receives progress as verified bytes land.
pub trait Progress: Send + Sync {
    /// The total is known.
    fn set_total(&self, bytes: u64);
    /// Whether the receiver has room for `total` bytes: called once the length is known,
    /// before the output file is created or any byte fetched. An `Err` (the reason, for
    /// people) ends the download with [`DownloadError::NoSpace`](crate::DownloadError::NoSpace).
    /// A receiver that reserves space here keeps it until the download has ended.
    ///
    /// # Errors
    /// No room; the message says why.
    fn admit(&self, _total: u64) -> Result<(), String> {
        Ok(())
    }
    /// `bytes` more are verified and written.
    fn advance(&self, bytes: u64);
    /// The download writes into `file` (`total` bytes long). Called again if the download
    /// starts over in a new file (e.g. back to the origin after the swarm failed); bytes
    /// reported before then are to be forgotten.
    fn started(&self, _file: &Arc<File>, _total: u64) {}
    /// The download takes `via`: called before [`Progress::started`] each time.
    fn via(&self, _via: &Via) {}
    /// Bytes `range` of the file passed to [`Progress::started`] are verified and written, so
    /// a reader may stream them before the download ends.
    fn written(&self, _range: Range<u64>) {}
    /// Byte ranges a reader has started waiting for since the last call (a ranged read of
    /// content still downloading). The engine fetches their pieces first and asks the
    /// supernode for them first. Polled at least every sync interval.
    fn take_urgent(&self) -> Vec<Range<u64>> {
        Vec::new()
    }
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_source_reports_its_reason_as_a_label_and_in_json() {
        let why = BackSource {
            reason: FallbackReason::SupernodeOriginUnreachable,
            detail: "supernode cannot reach the origin (dns error)".into(),
        };
        assert_eq!(
            why.to_string(),
            "supernode cannot reach the origin (dns error)"
        );
        assert_eq!(why.reason.label(), "supernode_origin_unreachable");
        let json = serde_json::to_value(&why).unwrap();
        assert_eq!(json["reason"], "supernode_origin_unreachable");
        let labels: std::collections::HashSet<_> = [
            FallbackReason::NoSupernode,
            FallbackReason::SupernodeUnreachable,
            FallbackReason::SupernodeLost,
            FallbackReason::SupernodeOriginUnreachable,
        ]
        .map(FallbackReason::label)
        .into();
        assert_eq!(labels.len(), 4);
    }
}
