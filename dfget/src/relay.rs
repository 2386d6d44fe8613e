//! Relaying a piece while it arrives ("cut-through"): a peer announces a piece to the
//! children that asked for it ([`damselfly_proto::AnnounceRequest::arriving`]) as soon as
//! its bytes start to come in, and answers their requests
//! ([`damselfly_proto::PieceRequest::streamed`]) by sending each block once it is written,
//! instead of after the whole piece is in and verified. Decided in the simulator first
//! (`swarm-sim --cut-through`, docs/benchmarks.md).
//!
//! ```text
//!  child ── PieceRequest {streamed} ──▶ relay ◀── bytes arriving ── its parent
//!        ◀── PieceResponse {streamed, relays}
//!        ◀── [len u32][bytes] … as the relay writes them (the last 64 KiB held back)
//!        ◀── [0] once the relay verified the piece, or [u32::MAX]: withdrawn
//! ```
//!
//! Nothing unverified is ever final: the relay holds back the last [`HOLD_BACK`] bytes until
//! its own check of the piece passed, so a child's copy can only complete with bytes the
//! relay verified; when the relay's transfer breaks or its check fails, the child gets
//! [`damselfly_proto::STREAM_WITHDRAWN`] ([`crate::fetch::FetchError::Withdrawn`]): not the
//! relay's fault, no back-off, the connection and the requests pipelined on it go on. The
//! child checks the piece against its own digest as always. A request from a peer the bytes
//! pass through on their way to the relay ([`damselfly_proto::PieceResponse::relays`]) is
//! answered `Withdrawn`, so no piece is ever relayed in a circle.

use std::{fs::File, os::unix::fs::FileExt, sync::Arc};

use damselfly_common::vouch::Vouch;
use damselfly_proto::{STREAM_END, STREAM_WITHDRAWN};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    sync::watch,
};

use crate::server::ServedTask;

/// Bytes at the end of a piece a relay sends only once it verified the piece.
pub const HOLD_BACK: u64 = 64 << 10;

/// Largest chunk a relay sends at once.
const CHUNK: u64 = 256 << 10;

/// How far a piece that is arriving has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// This many bytes from the piece's start are written to the content file.
    Arriving(u64),
    /// Every byte is in and the piece's digest matched.
    Verified,
    /// The transfer failed or the bytes did not match: the rest will not come.
    Lost,
}

/// A piece that is arriving at this peer, as its children see it.
#[derive(Debug)]
pub(crate) struct Arrival {
    pub(crate) progress: watch::Sender<Progress>,
    /// The vouch the piece's sender passed on (unchecked: each child checks it).
    pub(crate) vouch: Option<Vouch>,
    /// The peers the bytes pass through on their way here, nearest first.
    pub(crate) upstream: Vec<u64>,
}

/// Where a piece being fetched is published while it arrives: set on a
/// [`crate::fetch::PieceSink`] to relay the piece.
#[derive(Debug, Clone)]
pub struct Relay {
    /// The task, as this peer serves it.
    pub task: Arc<ServedTask>,
    /// The piece.
    pub piece: u32,
    /// The peer the bytes come from (`None`: the supernode).
    pub parent: Option<u64>,
}

/// A piece arriving and published to children; dropped when the transfer ends. If the
/// piece was not verified by then ([`ServedTask::mark_vouched`]), its children are told it
/// is withdrawn.
#[derive(Debug)]
pub struct ArrivalGuard {
    task: Arc<ServedTask>,
    piece: u32,
    arrival: Arc<Arrival>,
}

impl ArrivalGuard {
    pub(crate) fn new(task: Arc<ServedTask>, piece: u32, arrival: Arc<Arrival>) -> Self {
        Self {
            task,
            piece,
            arrival,
        }
    }

    /// `done` bytes from the piece's start are written.
    pub(crate) fn advance(&self, done: u64) {
        self.arrival.progress.send_replace(Progress::Arriving(done));
    }
}

impl Drop for ArrivalGuard {
    fn drop(&mut self) {
        self.task.end_arrival(self.piece, &self.arrival);
    }
}

impl Relay {
    /// Publishes the piece as arriving with the `vouch` and `relays` its sender's answer
    /// carried; `None` when it is already held or arriving.
    pub(crate) fn begin(&self, vouch: Option<Vouch>, relays: &[u64]) -> Option<ArrivalGuard> {
        let upstream: Vec<u64> = self
            .parent
            .into_iter()
            .chain(relays.iter().copied())
            .take(damselfly_proto::MAX_RELAYS)
            .collect();
        self.task.begin_arrival(self.piece, vouch, upstream)
    }
}

/// Sends the `len` bytes at `offset` of `file` as a streamed body while they arrive: each
/// chunk once written, the last [`HOLD_BACK`] bytes once verified, then
/// [`STREAM_END`]; or [`STREAM_WITHDRAWN`] when the piece is lost. Returns whether the
/// whole piece went.
///
/// # Errors
/// The connection failed, or reading the file failed (the connection's framing is then
/// lost: the caller closes it).
pub(crate) async fn send_streamed<W: AsyncWrite + Unpin>(
    wr: &mut W,
    arrival: &Arrival,
    file: &Arc<File>,
    offset: u64,
    len: u64,
) -> std::io::Result<bool> {
    let mut rx = arrival.progress.subscribe();
    let mut sent = 0u64;
    let mut buf = Vec::new();
    loop {
        let progress = *rx.borrow_and_update();
        let limit = match progress {
            Progress::Lost => {
                wr.write_all(&STREAM_WITHDRAWN.to_be_bytes()).await?;
                return Ok(false);
            }
            Progress::Verified => len,
            Progress::Arriving(done) => done.min(len.saturating_sub(HOLD_BACK)),
        };
        while sent < limit {
            let n = (limit - sent).min(CHUNK);
            let at = offset + sent;
            let f = file.clone();
            let mut chunk = std::mem::take(&mut buf);
            // n <= CHUNK, far below usize::MAX.
            chunk.resize(n as usize, 0);
            buf = tokio::task::spawn_blocking(move || {
                f.read_exact_at(&mut chunk, at).map(|()| chunk)
            })
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
            // n <= CHUNK < STREAM_WITHDRAWN.
            wr.write_all(&(n as u32).to_be_bytes()).await?;
            wr.write_all(&buf).await?;
            sent += n;
        }
        if progress == Progress::Verified {
            wr.write_all(&STREAM_END.to_be_bytes()).await?;
            return Ok(true);
        }
        // The sender lives in `arrival`, which outlives this call.
        if rx.changed().await.is_err() {
            wr.write_all(&STREAM_WITHDRAWN.to_be_bytes()).await?;
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{net::SocketAddr, time::Duration};

    use damselfly_common::Sha256Hasher;
    use damselfly_proto::{PROTOCOL_VERSION, PieceRequest};
    use tokio_util::{sync::CancellationToken, task::TaskTracker};

    use super::*;
    use crate::{
        fetch::{FetchError, PieceSink},
        server::{Fault, PieceServer, ServerLimits},
        tcp::Link,
    };

    const PIECE: u64 = 1 << 20;
    const WAIT: Duration = Duration::from_secs(5);

    /// A parent serving a 4-piece task with piece 0 held; its content and address.
    async fn parent() -> (Arc<ServedTask>, Vec<u8>, SocketAddr, CancellationToken) {
        let limits = ServerLimits {
            upload_slots: 4,
            upload_queue: 32,
            upload_rate: 0,
            sendfile: false,
        };
        let server = Arc::new(PieceServer::new(limits, Fault::None));
        let content: Vec<u8> = (0..4 * PIECE).map(|i| (i * 7 % 251) as u8).collect();
        let file = tempfile::tempfile().unwrap();
        file.set_len(4 * PIECE).unwrap();
        file.write_all_at(&content[..PIECE as usize], 0).unwrap();
        let task = Arc::new(ServedTask::new(Arc::new(file), 4 * PIECE, PIECE as u32, 4));
        task.mark(0);
        server.add("sha256:t", task.clone());
        let listener = crate::tcp::listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(server.run_tcp(listener, stop.clone(), TaskTracker::new()));
        (task, content, addr, stop)
    }

    fn request(piece: u32, peer_id: u64, streamed: bool) -> PieceRequest {
        PieceRequest {
            version: PROTOCOL_VERSION,
            task_id: "sha256:t".into(),
            piece,
            peer_id,
            token: Vec::new(),
            streamed,
        }
    }

    /// A child's output file and the sink for `piece` in it.
    fn sink(piece: u32) -> (Arc<File>, PieceSink) {
        let file = Arc::new(tempfile::tempfile().unwrap());
        file.set_len(4 * PIECE).unwrap();
        let sink = PieceSink {
            file: file.clone(),
            path: Arc::from(std::path::Path::new("child")),
            offset: u64::from(piece) * PIECE,
            len: PIECE,
            relay: None,
        };
        (file, sink)
    }

    fn sha(bytes: &[u8]) -> damselfly_common::Digest {
        let mut h = Sha256Hasher::new();
        h.update(bytes);
        h.finish()
    }

    /// Writes `range` of piece 1's bytes at the parent, as its own transfer would.
    fn arrive(task: &ServedTask, content: &[u8], guard: &ArrivalGuard, upto: u64) {
        let at = PIECE as usize;
        task.file()
            .write_all_at(&content[at..at + upto as usize], PIECE)
            .unwrap();
        guard.advance(upto);
    }

    #[tokio::test]
    async fn a_child_gets_a_piece_while_it_arrives_and_its_end_only_once_verified() {
        let (task, content, addr, _stop) = parent().await;
        let guard = task.begin_arrival(1, None, vec![42]).expect("not held yet");
        arrive(&task, &content, &guard, PIECE / 2);

        let link = Link::connect(addr, WAIT, WAIT).await.unwrap();
        let (out, s) = sink(1);
        let fetch = tokio::spawn({
            let link = link.clone();
            async move { link.fetch_into(addr, &request(1, 1, true), s).await }
        });
        // Half the piece comes before the rest has arrived at the parent.
        let mut got = vec![0u8; (PIECE / 2) as usize];
        tokio::time::timeout(WAIT, async {
            loop {
                out.read_exact_at(&mut got, PIECE).unwrap();
                if got[..] == content[PIECE as usize..(PIECE + PIECE / 2) as usize] {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the first half is relayed while the rest arrives");
        // Every byte in, not yet verified: the child still waits for the held-back end.
        arrive(&task, &content, &guard, PIECE);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!fetch.is_finished(), "the last block waits for the check");
        task.mark_vouched(1, None);
        let fetched = tokio::time::timeout(WAIT, fetch)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            fetched.digest,
            sha(&content[PIECE as usize..2 * PIECE as usize])
        );
        drop(guard);
        // Held now: served whole, as any piece.
        let (_, s) = sink(1);
        let again = link.fetch_into(addr, &request(1, 1, false), s).await;
        assert!(again.is_ok(), "{again:?}");
    }

    #[tokio::test]
    async fn a_lost_arrival_is_withdrawn_and_the_connection_goes_on() {
        let (task, content, addr, _stop) = parent().await;
        let guard = task.begin_arrival(1, None, Vec::new()).unwrap();
        arrive(&task, &content, &guard, PIECE / 4);
        let link = Link::connect(addr, WAIT, WAIT).await.unwrap();
        let (_, s1) = sink(1);
        let (_, s0) = sink(0);
        // Two requests pipelined on one connection: the relayed piece, then a held one.
        let relayed = tokio::spawn({
            let link = link.clone();
            async move { link.fetch_into(addr, &request(1, 1, true), s1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let held = tokio::spawn({
            let link = link.clone();
            async move { link.fetch_into(addr, &request(0, 1, true), s0).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(guard); // the parent's own transfer failed
        let r = tokio::time::timeout(WAIT, relayed).await.unwrap().unwrap();
        assert!(matches!(r, Err(FetchError::Withdrawn)), "{r:?}");
        let h = tokio::time::timeout(WAIT, held).await.unwrap().unwrap();
        assert_eq!(h.unwrap().digest, sha(&content[..PIECE as usize]));
        assert!(!link.is_closed());
        // Asked again: withdrawn (it was announced), not "never had it".
        let (_, s) = sink(1);
        let again = link.fetch_into(addr, &request(1, 1, true), s).await;
        assert!(matches!(again, Err(FetchError::Withdrawn)), "{again:?}");
        // A child that does not take arriving pieces was never told of it.
        let (_, s) = sink(1);
        let old = link.fetch_into(addr, &request(1, 1, false), s).await;
        assert!(matches!(old, Err(FetchError::Unavailable)), "{old:?}");
    }

    #[tokio::test]
    async fn a_peer_upstream_of_a_relay_is_not_sent_its_own_bytes_back() {
        let (task, content, addr, _stop) = parent().await;
        let guard = task.begin_arrival(2, None, vec![5, 6]).unwrap();
        arrive(&task, &content, &guard, PIECE / 4);
        let link = Link::connect(addr, WAIT, WAIT).await.unwrap();
        for upstream in [5, 6] {
            let (_, s) = sink(2);
            let r = link.fetch_into(addr, &request(2, upstream, true), s).await;
            assert!(matches!(r, Err(FetchError::Withdrawn)), "{r:?}");
        }
        // Nor to a child that does not take arriving pieces.
        let (_, s) = sink(2);
        let r = link.fetch_into(addr, &request(2, 9, false), s).await;
        assert!(matches!(r, Err(FetchError::Unavailable)), "{r:?}");
    }

    #[tokio::test]
    async fn a_relay_whose_check_fails_withdraws_instead_of_sending_the_end() {
        let (task, content, addr, _stop) = parent().await;
        let guard = task.begin_arrival(1, None, Vec::new()).unwrap();
        let link = Link::connect(addr, WAIT, WAIT).await.unwrap();
        let (_, s) = sink(1);
        let fetch = tokio::spawn({
            let link = link.clone();
            async move { link.fetch_into(addr, &request(1, 1, true), s).await }
        });
        arrive(&task, &content, &guard, PIECE);
        tokio::time::sleep(Duration::from_millis(100)).await;
        // The digest did not match: the guard goes without the piece being marked.
        drop(guard);
        let r = tokio::time::timeout(WAIT, fetch).await.unwrap().unwrap();
        assert!(matches!(r, Err(FetchError::Withdrawn)), "{r:?}");
        assert!(
            task.begin_arrival(1, None, Vec::new()).is_some(),
            "may arrive again"
        );
    }

    #[test]
    fn a_held_or_arriving_piece_is_not_published_twice() {
        let task = Arc::new(ServedTask::new(
            Arc::new(tempfile::tempfile().unwrap()),
            4 * PIECE,
            PIECE as u32,
            4,
        ));
        task.mark(0);
        assert!(task.begin_arrival(0, None, Vec::new()).is_none());
        let g = task.begin_arrival(1, None, Vec::new()).unwrap();
        assert!(task.begin_arrival(1, None, Vec::new()).is_none());
        assert!(
            task.begin_arrival(9, None, Vec::new()).is_none(),
            "out of range"
        );
        drop(g);
    }

    /// An answer header and a streamed body made of `chunks` (length, bytes).
    fn streamed_answer(len: u64, chunks: &[(u32, &[u8])]) -> Vec<u8> {
        let mut out = damselfly_proto::encode_frame(&damselfly_proto::PieceResponse {
            version: PROTOCOL_VERSION,
            status: damselfly_proto::PieceStatus::Ok as i32,
            length: len,
            streamed: true,
            ..Default::default()
        });
        for (n, bytes) in chunks {
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(bytes);
        }
        out
    }

    #[tokio::test]
    async fn a_malformed_streamed_body_is_a_protocol_error() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let data = vec![3u8; 100];
        let read = |raw: Vec<u8>| async move {
            let (_, s) = sink(0);
            let s = PieceSink { len: 100, ..s };
            crate::fetch::read_answer(addr, &mut raw.as_slice(), &s, WAIT).await
        };
        let ok = read(streamed_answer(
            100,
            &[(60, &data[..60]), (40, &data[..40]), (0, &[])],
        ))
        .await;
        assert_eq!(ok.unwrap().digest, sha(&data));
        for (raw, what) in [
            (
                streamed_answer(100, &[(60, &data[..60]), (0, &[])]),
                "ends early",
            ),
            (
                streamed_answer(100, &[(120, &[3u8; 120])]),
                "chunk past the end",
            ),
            (
                streamed_answer(100, &[(damselfly_proto::MAX_STREAM_CHUNK + 1, &[])]),
                "huge chunk",
            ),
        ] {
            let r = read(raw).await;
            assert!(matches!(r, Err(FetchError::Protocol(_))), "{what}: {r:?}");
        }
        let cut = read(streamed_answer(100, &[(60, &data[..60])])).await;
        assert!(matches!(cut, Err(FetchError::Transport { .. })), "{cut:?}");
        let gone = read(streamed_answer(100, &[(60, &data[..60]), (u32::MAX, &[])])).await;
        assert!(matches!(gone, Err(FetchError::Withdrawn)), "{gone:?}");
    }
}
