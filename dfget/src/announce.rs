//! Announcements: a child learns which pieces its parents hold from the parents themselves,
//! instead of through the supernode's sync answers.
//!
//! ```text
//!  child                                         parent
//!    ── "DMSA" + version (u32 BE) ──────────▶
//!    ◀── "DMSA" + version ───────────────────     (an older parent: "DMSF", then close)
//!    ── AnnounceRequest frame ───────────────▶
//!    ◀── Announcement {status, bitfield} ─────    every piece it holds (or a refusal)
//!    ◀── Announcement {pieces} ───────────────    each batch of pieces verified since
//! ```
//!
//! One TCP connection per (child, parent, task), on the parent's piece port, beside the
//! piece connection, so an announcement never waits behind a piece's bytes. The parent
//! batches whatever was verified while it was writing; if it falls more than
//! [`NEWS_BACKLOG`] pieces behind it sends its whole bitfield again. The child closes the
//! connection when the supernode drops the parent or the download ends; the parent closes
//! it when it stops serving the task. At most [`MAX_SUBSCRIBERS`] connections per parent
//! (further ones are answered `Busy`); a malformed request is answered `BadRequest` and
//! closed. Announcements are hints: a piece is still checked against the supernode's digest,
//! and a parent that announces a piece and then does not serve it is backed off and not
//! asked for that piece again until it announces it anew.

use std::{
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use damselfly_proto::{
    AnnounceRequest, Announcement, ConnKind, DecodeError, FRAME_HEADER_LEN, MAX_MESSAGE_LEN,
    PROTOCOL_VERSION, PieceStatus, check_any_preamble, decode, encode_announce_preamble,
    encode_frame, frame_len,
};
use damselfly_swarm::{Bitmap, PeerId};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::tcp::{OwnedReadHalf, OwnedWriteHalf},
    sync::{broadcast::error::RecvError, mpsc},
};
use tracing::debug;

use crate::{fetch::FetchError, server::PieceServer, tcp::ConnError};

/// Pieces a parent may fall behind in announcing to one child before it sends its whole
/// bitfield instead.
pub const NEWS_BACKLOG: usize = 1024;

/// Announcement connections one parent keeps open at most.
pub const MAX_SUBSCRIBERS: u32 = 1024;

/// Largest announce request read from a child.
const MAX_REQUEST_FRAME: usize = 64 << 10;

/// How long a child has to send its request after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a parent told a child, for the download loop.
#[derive(Debug)]
pub enum News {
    /// Every piece the parent holds.
    Pieces(PeerId, Bitmap),
    /// Pieces the parent verified since.
    Have(PeerId, Vec<u32>),
    /// The subscription ended, or the parent refused it (it does not know the task yet,
    /// predates announcements, or refused the token).
    Lost(PeerId),
    /// No connection to the parent could be made or kept (refused, no handshake within the
    /// connect timeout, broken): it is probably gone or hung.
    Unreachable(PeerId),
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of stream.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, ConnError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match rd.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = frame_len(&header)?;
    if len > max {
        return Err(DecodeError::TooLarge { len, max }.into());
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(Some(body))
}

fn announcement(status: PieceStatus) -> Announcement {
    Announcement {
        version: PROTOCOL_VERSION,
        status: status as i32,
        bitfield: Vec::new(),
        pieces: Vec::new(),
        reason: String::new(),
    }
}

/// Decrements the subscriber count when a subscription ends.
struct Subscribed(Arc<PieceServer>);

impl Drop for Subscribed {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl PieceServer {
    /// Serves one announcement connection whose preamble was read (and ours sent).
    pub(crate) async fn serve_announcements(
        self: Arc<Self>,
        mut rd: OwnedReadHalf,
        mut wr: OwnedWriteHalf,
        remote: SocketAddr,
    ) -> Result<(), ConnError> {
        let raw = tokio::time::timeout(REQUEST_TIMEOUT, read_frame(&mut rd, MAX_REQUEST_FRAME))
            .await
            .map_err(|_| ConnError::Timeout)??;
        let Some(raw) = raw else { return Ok(()) };
        let req = match decode::<AnnounceRequest>(&raw).and_then(|r| r.validate().map(|()| r)) {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "malformed announce request; closing the connection");
                let refusal = encode_frame(&announcement(PieceStatus::BadRequest));
                let _ = wr.write_all(&refusal).await;
                return Err(e.into());
            }
        };
        if let Err(reason) = self.admit(
            &req.task_id,
            req.peer_id,
            &req.token,
            remote,
            "subscription",
        ) {
            let refusal = Announcement {
                reason,
                ..announcement(PieceStatus::Unauthorized)
            };
            wr.write_all(&encode_frame(&refusal)).await?;
            let _ = wr.shutdown().await;
            return Ok(());
        }
        let Some(task) = self.task(&req.task_id) else {
            wr.write_all(&encode_frame(&announcement(PieceStatus::UnknownTask)))
                .await?;
            return Ok(());
        };
        if self.subscribers.fetch_add(1, Ordering::Relaxed) >= MAX_SUBSCRIBERS {
            self.subscribers.fetch_sub(1, Ordering::Relaxed);
            wr.write_all(&encode_frame(&announcement(PieceStatus::Busy)))
                .await?;
            return Ok(());
        }
        let _subscribed = Subscribed(self.clone());
        // Subscribed before the bitfield is read, so no piece falls between the two.
        let mut news = task.news.subscribe();
        // A child that takes arriving pieces hears of them too; any other only of pieces
        // verified here.
        let arriving = req.arriving;
        let full = |task: &crate::server::ServedTask| Announcement {
            bitfield: task.bitfield(arriving),
            ..announcement(PieceStatus::Ok)
        };
        wr.write_all(&encode_frame(&full(&task))).await?;
        debug!(task = %req.task_id, child = req.peer_id, arriving, "child subscribed to announcements");
        let mut probe = [0u8; 1];
        let wanted = |(piece, early): (u32, bool)| (arriving || !early).then_some(piece);
        loop {
            let frame = tokio::select! {
                _ = task.closed.cancelled() => break,
                // The child sends nothing more: end of stream (or anything) ends it.
                _ = rd.read(&mut probe) => break,
                r = news.recv() => match r {
                    Ok(first) => {
                        let mut pieces: Vec<u32> = wanted(first).into_iter().collect();
                        while let Ok(p) = news.try_recv() {
                            pieces.extend(wanted(p));
                        }
                        if pieces.is_empty() {
                            continue;
                        }
                        Announcement { pieces, ..announcement(PieceStatus::Ok) }
                    }
                    Err(RecvError::Lagged(_)) => full(&task),
                    Err(RecvError::Closed) => break,
                },
            };
            wr.write_all(&encode_frame(&frame)).await?;
        }
        let _ = wr.shutdown().await;
        Ok(())
    }
}

/// Subscribes to `parent`'s announcements of a task of `pieces` pieces at `addr` as `me`,
/// and forwards them to `news` until the connection ends; then sends [`News::Unreachable`]
/// if the connection failed, else [`News::Lost`]. Cancel it by dropping the future (its
/// task).
pub async fn subscribe(
    parent: PeerId,
    addr: SocketAddr,
    me: Subscriber,
    pieces: u32,
    connect_timeout: Duration,
    news: mpsc::UnboundedSender<News>,
) {
    let end = match listen(parent, addr, &me, pieces, connect_timeout, &news).await {
        Err(e @ FetchError::Transport { .. }) => {
            debug!(%parent, %addr, error = %e, "parent unreachable for announcements");
            News::Unreachable(parent)
        }
        Err(e) => {
            debug!(%parent, %addr, error = %e, "announcements from parent ended");
            News::Lost(parent)
        }
        Ok(()) => News::Lost(parent),
    };
    let _ = news.send(end);
}

/// Who subscribes, to what.
#[derive(Clone, Debug)]
pub struct Subscriber {
    /// The task whose pieces are announced.
    pub task_id: String,
    /// This peer's id, as the supernode registered it.
    pub peer_id: u64,
    /// This peer's piece token for the task (empty when the cluster has none).
    pub token: Vec<u8>,
    /// Hear of pieces when they start arriving at the parent ([`crate::relay`]).
    pub arriving: bool,
}

async fn listen(
    parent: PeerId,
    addr: SocketAddr,
    me: &Subscriber,
    pieces: u32,
    connect_timeout: Duration,
    news: &mpsc::UnboundedSender<News>,
) -> Result<(), FetchError> {
    let protocol = |reason: String| FetchError::Protocol(format!("{addr}: {reason}"));
    let mut hello = encode_announce_preamble().to_vec();
    hello.extend(encode_frame(&AnnounceRequest {
        version: PROTOCOL_VERSION,
        task_id: me.task_id.clone(),
        peer_id: me.peer_id,
        token: me.token.clone(),
        arriving: me.arriving,
    }));
    let (mut rd, _wr, theirs) = crate::tcp::dial(addr, connect_timeout, &hello).await?;
    match check_any_preamble(&theirs) {
        Ok(ConnKind::Announcements) => {}
        Ok(ConnKind::Pieces) => {
            return Err(protocol(
                "parent does not announce pieces (older version)".into(),
            ));
        }
        Err(e) => return Err(protocol(e.to_string())),
    }
    let mut first = true;
    loop {
        let raw = match read_frame(&mut rd, MAX_MESSAGE_LEN).await {
            Ok(Some(raw)) => raw,
            Ok(None) => return Ok(()),
            Err(e) => return Err(protocol(e.to_string())),
        };
        let a: Announcement = decode(&raw).map_err(|e| protocol(e.to_string()))?;
        a.validate().map_err(|e| protocol(e.to_string()))?;
        if a.status == PieceStatus::Unauthorized as i32 {
            return Err(FetchError::Unauthorized(a.reason));
        }
        if a.status != PieceStatus::Ok as i32 {
            return Err(protocol(format!(
                "subscription refused (status {})",
                a.status
            )));
        }
        if first || !a.bitfield.is_empty() {
            let bits = Bitmap::from_bytes(pieces, &a.bitfield)
                .map_err(|e| protocol(format!("bitfield: {e}")))?;
            if news.send(News::Pieces(parent, bits)).is_err() {
                return Ok(());
            }
            first = false;
        }
        if let Some(&p) = a.pieces.iter().find(|&&p| p >= pieces) {
            return Err(protocol(format!("announced piece {p} of {pieces}")));
        }
        if !a.pieces.is_empty() && news.send(News::Have(parent, a.pieces)).is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Fault, ServedTask, ServerLimits};
    use damselfly_proto::PREAMBLE_LEN;
    use tokio::net::TcpStream;
    use tokio_util::{sync::CancellationToken, task::TaskTracker};

    const WAIT: Duration = Duration::from_secs(5);

    async fn parent() -> (
        Arc<PieceServer>,
        Arc<ServedTask>,
        SocketAddr,
        CancellationToken,
    ) {
        parent_checking(None).await
    }

    async fn parent_checking(
        key: Option<damselfly_common::TokenKey>,
    ) -> (
        Arc<PieceServer>,
        Arc<ServedTask>,
        SocketAddr,
        CancellationToken,
    ) {
        let limits = ServerLimits {
            upload_slots: 4,
            upload_queue: 32,
            upload_rate: 0,
            sendfile: true,
        };
        let server = Arc::new(PieceServer::new(limits, Fault::None).with_tokens(key, None));
        let file = tempfile::tempfile().unwrap();
        file.set_len(4 << 20).unwrap();
        let task = Arc::new(ServedTask::new(Arc::new(file), 4 << 20, 1 << 20, 4));
        task.mark(0);
        server.add("sha256:t", task.clone());
        let listener = crate::tcp::listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(
            server
                .clone()
                .run_tcp(listener, stop.clone(), TaskTracker::new()),
        );
        (server, task, addr, stop)
    }

    /// Subscribes (as peer 1) to the announcements of `task_id` (4 pieces) at `addr`, in a
    /// task of its own; the news it forwards.
    fn listen_to(
        parent: PeerId,
        addr: SocketAddr,
        task_id: &str,
        token: Vec<u8>,
    ) -> mpsc::UnboundedReceiver<News> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(subscribe(
            parent,
            addr,
            Subscriber {
                task_id: task_id.into(),
                peer_id: 1,
                token,
                arriving: false,
            },
            4,
            WAIT,
            tx,
        ));
        rx
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<News>) -> News {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_child_gets_the_bitfield_then_each_new_piece_then_the_end() {
        let (server, task, addr, _stop) = parent().await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let p = PeerId(7);
        tokio::spawn(subscribe(
            p,
            addr,
            Subscriber {
                task_id: "sha256:t".into(),
                peer_id: 1,
                token: Vec::new(),
                arriving: false,
            },
            4,
            WAIT,
            tx,
        ));
        match next(&mut rx).await {
            News::Pieces(id, bits) => {
                assert_eq!(id, p);
                assert_eq!(bits.iter_ones().collect::<Vec<_>>(), vec![0]);
            }
            other => panic!("expected the bitfield, got {other:?}"),
        }
        task.mark(2);
        task.mark(2); // marked twice, announced once
        task.mark(3);
        let mut got = Vec::new();
        while got.len() < 2 {
            match next(&mut rx).await {
                News::Have(id, pieces) => {
                    assert_eq!(id, p);
                    got.extend(pieces);
                }
                other => panic!("expected announcements, got {other:?}"),
            }
        }
        assert_eq!(got, vec![2, 3]);
        assert_eq!(server.subscribers.load(Ordering::Relaxed), 1);
        server.remove("sha256:t");
        assert!(matches!(next(&mut rx).await, News::Lost(id) if id == p));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.subscribers.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_unknown_task_or_an_older_parent_ends_the_subscription_without_news() {
        let (_server, _task, addr, _stop) = parent().await;
        let mut rx = listen_to(PeerId(1), addr, "sha256:other", Vec::new());
        assert!(matches!(next(&mut rx).await, News::Lost(PeerId(1))));

        // A parent that predates announcements answers with its piece preamble and closes.
        let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let old_addr = old.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = old.accept().await.unwrap();
            let mut theirs = [0u8; PREAMBLE_LEN];
            s.read_exact(&mut theirs).await.unwrap();
            s.write_all(&damselfly_proto::encode_preamble())
                .await
                .unwrap();
        });
        let mut rx = listen_to(PeerId(2), old_addr, "sha256:t", Vec::new());
        assert!(matches!(next(&mut rx).await, News::Lost(PeerId(2))));

        // Nobody listening: unreachable, not merely lost.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone_addr = gone.local_addr().unwrap();
        drop(gone);
        let mut rx = listen_to(PeerId(3), gone_addr, "sha256:t", Vec::new());
        assert!(matches!(next(&mut rx).await, News::Unreachable(PeerId(3))));
    }

    #[tokio::test]
    async fn a_malformed_request_is_refused_and_closed_and_the_parent_serves_on() {
        let (server, _task, addr, _stop) = parent().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode_announce_preamble()).await.unwrap();
        s.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        let mut theirs = [0u8; PREAMBLE_LEN];
        s.read_exact(&mut theirs).await.unwrap();
        assert_eq!(check_any_preamble(&theirs), Ok(ConnKind::Announcements));
        let raw = read_frame(&mut s, MAX_MESSAGE_LEN).await.unwrap().unwrap();
        let a: Announcement = decode(&raw).unwrap();
        assert_eq!(a.status, PieceStatus::BadRequest as i32);
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "closed after the refusal");

        // An oversized frame length is refused before anything is allocated.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode_announce_preamble()).await.unwrap();
        s.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rest.len(),
            PREAMBLE_LEN,
            "its preamble, then the connection closes"
        );

        // Others are untouched.
        let mut rx = listen_to(PeerId(3), addr, "sha256:t", Vec::new());
        assert!(matches!(next(&mut rx).await, News::Pieces(PeerId(3), _)));
        assert_eq!(server.subscribers.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_parent_checking_tokens_refuses_a_subscriber_without_a_valid_one() {
        let key = damselfly_common::TokenKey::new(b"announce-test-secret-0123456789").unwrap();
        let (server, _task, addr, _stop) = parent_checking(Some(key.clone())).await;
        let other = damselfly_common::TokenKey::new(b"another-cluster-secret-01234567").unwrap();
        let refused = [
            Vec::new(),
            other.issue_for("sha256:t", 1, Duration::from_secs(60)),
            key.issue_for("sha256:t", 2, Duration::from_secs(60)),
            key.issue("sha256:t", 1, 1),
        ];
        for (i, token) in refused.into_iter().enumerate() {
            let mut rx = listen_to(PeerId(5), addr, "sha256:t", token);
            assert!(
                matches!(next(&mut rx).await, News::Lost(PeerId(5))),
                "token {i} got news"
            );
            assert_eq!(server.token_refusals(), i as u64 + 1);
        }
        assert_eq!(server.subscribers.load(Ordering::Relaxed), 0);

        // The refusal says why, and the connection closes after it.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&encode_announce_preamble()).await.unwrap();
        s.write_all(&encode_frame(&AnnounceRequest {
            version: PROTOCOL_VERSION,
            task_id: "sha256:t".into(),
            peer_id: 1,
            token: Vec::new(),
            arriving: false,
        }))
        .await
        .unwrap();
        let mut theirs = [0u8; PREAMBLE_LEN];
        s.read_exact(&mut theirs).await.unwrap();
        let raw = read_frame(&mut s, MAX_MESSAGE_LEN).await.unwrap().unwrap();
        let a: Announcement = decode(&raw).unwrap();
        assert_eq!(a.status, PieceStatus::Unauthorized as i32);
        assert_eq!(a.reason, "no piece token");
        assert!(a.bitfield.is_empty());
        let mut rest = Vec::new();
        let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0, "nothing after the refusal");

        // The admitted peer's own token opens it.
        let token = key.issue_for("sha256:t", 1, Duration::from_secs(60));
        let mut rx = listen_to(PeerId(6), addr, "sha256:t", token);
        assert!(matches!(next(&mut rx).await, News::Pieces(PeerId(6), _)));
        assert_eq!(server.token_refusals(), 5);
    }

    #[tokio::test]
    async fn only_a_child_that_takes_arriving_pieces_hears_of_them_before_they_are_verified() {
        let (_server, task, addr, _stop) = parent().await;
        let guard = task.begin_arrival(1, None, Vec::new()).unwrap();
        let mut rxs = Vec::new();
        for arriving in [true, false] {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(subscribe(
                PeerId(7),
                addr,
                Subscriber {
                    task_id: "sha256:t".into(),
                    peer_id: 1,
                    token: Vec::new(),
                    arriving,
                },
                4,
                WAIT,
                tx,
            ));
            rxs.push(rx);
        }
        let [early, late] = &mut rxs[..] else {
            unreachable!()
        };
        // The bitfield: arriving piece 1 counts for the first only.
        for (rx, want) in [(&mut *early, vec![0, 1]), (&mut *late, vec![0])] {
            match next(rx).await {
                News::Pieces(_, bits) => assert_eq!(bits.iter_ones().collect::<Vec<_>>(), want),
                other => panic!("expected the bitfield, got {other:?}"),
            }
        }
        let g2 = task.begin_arrival(2, None, Vec::new()).unwrap();
        assert!(matches!(next(early).await, News::Have(_, p) if p == vec![2]));
        task.mark(2);
        drop(g2);
        // The other hears of piece 2 once verified, and never of arrivals.
        assert!(matches!(next(late).await, News::Have(_, p) if p == vec![2]));
        drop(guard);
        task.mark(3);
        assert!(matches!(next(late).await, News::Have(_, p) if p == vec![3]));
    }
}
