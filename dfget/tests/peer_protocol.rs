//! The piece server against hostile requests, over QUIC and TCP: it answers with an error
//! status (or closes that stream or connection) and keeps serving; and the TCP transport's
//! pipelining, queueing and version check.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};

use std::{fs::File, io::Write as _, sync::Arc, time::Duration};

use damselfly_common::{Digest, TokenKey};
use damselfly_proto::{
    FRAME_HEADER_LEN, PEER_PROTOCOL_VERSION, PREAMBLE_LEN, PROTOCOL_VERSION, PieceRequest,
    PieceResponse, PieceStatus, decode, encode_frame, encode_preamble, frame_len,
};
use dfget::{
    Engine, EngineConfig, Fault,
    fetch::{FetchError, PieceSink},
    quic,
    server::{PieceServer, ServedTask, ServerLimits},
    tcp::{self, Link},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

async fn engine() -> Engine {
    Engine::start(EngineConfig {
        peer_listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))),
        ..EngineConfig::default()
    })
    .await
    .unwrap()
}

/// Sends `raw` on a fresh stream and returns the response status, or `None` if the server
/// closed the stream without a response.
async fn ask(conn: &quinn::Connection, raw: &[u8]) -> Option<PieceStatus> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(raw).await.ok()?;
    send.finish().ok()?;
    let mut header = [0u8; FRAME_HEADER_LEN];
    recv.read_exact(&mut header).await.ok()?;
    let len = frame_len(&header).unwrap();
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.ok()?;
    let resp: PieceResponse = decode(&body).unwrap();
    PieceStatus::try_from(resp.status).ok()
}

#[tokio::test]
async fn hostile_piece_requests_get_errors_and_the_server_keeps_serving() {
    let server = engine().await;
    let client = quic::endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let conn = client
        .connect(server.peer_addr(), quic::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();

    // Garbage protobuf inside a well-formed frame.
    let mut garbage = 10u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 10]);
    assert_eq!(ask(&conn, &garbage).await, Some(PieceStatus::BadRequest));

    // A frame header announcing far more than the limit.
    let oversize = u32::MAX.to_be_bytes();
    assert_eq!(ask(&conn, &oversize).await, Some(PieceStatus::BadRequest));

    // A truncated frame.
    assert_eq!(ask(&conn, &[0, 0]).await, Some(PieceStatus::BadRequest));

    // Wrong protocol version.
    let v2 = encode_frame(&PieceRequest {
        version: PROTOCOL_VERSION + 1,
        task_id: "sha256:00".into(),
        piece: 0,
        peer_id: 9,
        token: Vec::new(),
        streamed: false,
    });
    assert_eq!(ask(&conn, &v2).await, Some(PieceStatus::BadRequest));

    // An unknown task.
    let unknown = encode_frame(&PieceRequest {
        version: PROTOCOL_VERSION,
        task_id: "sha256:00".into(),
        piece: 0,
        peer_id: 9,
        token: Vec::new(),
        streamed: false,
    });
    assert_eq!(ask(&conn, &unknown).await, Some(PieceStatus::UnknownTask));

    // Still answering on the same connection after all that.
    assert_eq!(ask(&conn, &unknown).await, Some(PieceStatus::UnknownTask));
    server.shutdown(Duration::from_secs(1)).await;
}

/// Opens a TCP peer connection and exchanges preambles.
async fn tcp_conn(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&encode_preamble()).await.unwrap();
    let mut theirs = [0u8; PREAMBLE_LEN];
    s.read_exact(&mut theirs).await.unwrap();
    assert_eq!(theirs, encode_preamble());
    s
}

/// Reads one response header from a TCP peer connection; `None` once the server closed it.
async fn tcp_answer(s: &mut TcpStream) -> Option<PieceResponse> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    s.read_exact(&mut header).await.ok()?;
    let mut body = vec![0u8; frame_len(&header).unwrap()];
    s.read_exact(&mut body).await.ok()?;
    Some(decode(&body).unwrap())
}

/// Whether the server has closed `s` (end of stream within a second).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

fn status(r: &PieceResponse) -> PieceStatus {
    PieceStatus::try_from(r.status).unwrap()
}

fn request(task: &str, piece: u32) -> PieceRequest {
    PieceRequest {
        version: PROTOCOL_VERSION,
        task_id: task.into(),
        piece,
        peer_id: 9,
        token: Vec::new(),
        streamed: false,
    }
}

#[tokio::test]
async fn hostile_tcp_frames_close_only_their_connection() {
    let server = engine().await;
    let addr = server.peer_addr();

    // An unknown task keeps the connection: a second request on it is answered too.
    let mut ok = tcp_conn(addr).await;
    ok.write_all(&encode_frame(&request("sha256:00", 0)))
        .await
        .unwrap();
    ok.write_all(&encode_frame(&request("sha256:00", 1)))
        .await
        .unwrap();
    for _ in 0..2 {
        let r = tcp_answer(&mut ok).await.unwrap();
        assert_eq!(status(&r), PieceStatus::UnknownTask);
    }

    // Garbage protobuf in a well-formed frame: BadRequest, then the connection closes.
    let mut bad = tcp_conn(addr).await;
    let mut garbage = 10u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 10]);
    bad.write_all(&garbage).await.unwrap();
    assert_eq!(
        status(&tcp_answer(&mut bad).await.unwrap()),
        PieceStatus::BadRequest
    );
    assert!(
        closed(&mut bad).await,
        "a malformed frame closes its connection"
    );

    // A frame header announcing far more than the limit: refused before any allocation.
    let mut huge = tcp_conn(addr).await;
    huge.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    assert_eq!(
        status(&tcp_answer(&mut huge).await.unwrap()),
        PieceStatus::BadRequest
    );
    assert!(closed(&mut huge).await);

    // A request of another message version.
    let mut old = tcp_conn(addr).await;
    let mut v = request("sha256:00", 0);
    v.version = PROTOCOL_VERSION + 1;
    old.write_all(&encode_frame(&v)).await.unwrap();
    assert_eq!(
        status(&tcp_answer(&mut old).await.unwrap()),
        PieceStatus::BadRequest
    );
    assert!(closed(&mut old).await);

    // Not a Damselfly peer at all: the server says who it is and hangs up.
    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut theirs = [0u8; PREAMBLE_LEN];
    http.read_exact(&mut theirs).await.unwrap();
    assert_eq!(theirs, encode_preamble());
    assert!(closed(&mut http).await);

    // The first connection still works after all that.
    ok.write_all(&encode_frame(&request("sha256:00", 2)))
        .await
        .unwrap();
    assert_eq!(
        status(&tcp_answer(&mut ok).await.unwrap()),
        PieceStatus::UnknownTask
    );
    server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_peer_of_another_version_gets_a_clear_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut theirs = [0u8; PREAMBLE_LEN];
        s.read_exact(&mut theirs).await.unwrap();
        let mut future = encode_preamble();
        future[4..].copy_from_slice(&(PEER_PROTOCOL_VERSION + 1).to_be_bytes());
        s.write_all(&future).await.unwrap();
    });
    let err = Link::connect(addr, Duration::from_secs(3), Duration::from_secs(3))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FetchError::Protocol(m) if m.contains("unsupported protocol version 3")),
        "{err}"
    );
}

/// A file that fetched pieces are written into.
struct Output {
    file: Arc<File>,
    path: tempfile::TempPath,
}

impl Output {
    fn new(len: usize) -> Self {
        let (file, path) = tempfile::NamedTempFile::new().unwrap().into_parts();
        file.set_len(len as u64).unwrap();
        Self {
            file: Arc::new(file),
            path,
        }
    }

    fn path(&self) -> &std::path::Path {
        &self.path
    }

    fn sink(&self, offset: u64, len: u64) -> PieceSink {
        PieceSink {
            file: self.file.clone(),
            path: Arc::from(self.path()),
            offset,
            len,
            relay: None,
        }
    }
}

/// A piece server on loopback serving one task of `pieces` 64 KiB pieces.
async fn serving(limits: ServerLimits, pieces: u32) -> (SocketAddr, Vec<u8>, CancellationToken) {
    let (addr, _, content, stop) = serving_with(limits, pieces, None).await;
    (addr, content, stop)
}

/// [`serving`], checking piece tokens with `key`; TCP and QUIC on the returned addresses.
async fn serving_with(
    limits: ServerLimits,
    pieces: u32,
    key: Option<TokenKey>,
) -> (SocketAddr, SocketAddr, Vec<u8>, CancellationToken) {
    const PIECE: u32 = 64 << 10;
    let content: Vec<u8> = (0..pieces as usize * PIECE as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&content).unwrap();
    let file: Arc<File> = Arc::new(file);
    let task = Arc::new(ServedTask::new(file, content.len() as u64, PIECE, pieces));
    for p in 0..pieces {
        task.mark(p);
    }
    let server = Arc::new(PieceServer::new(limits, Fault::None).with_tokens(key, None));
    server.add("sha256:11", task);
    let listener = tcp::listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let endpoint = quic::endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let quic_addr = endpoint.local_addr().unwrap();
    tokio::spawn(
        server
            .clone()
            .run_quic(endpoint, stop.clone(), TaskTracker::new()),
    );
    tokio::spawn(server.run_tcp(listener, stop.clone(), TaskTracker::new()));
    (addr, quic_addr, content, stop)
}

/// Over TCP and QUIC alike, a server with the cluster secret answers a request without a
/// valid token for its task and requester `Unauthorized` with the reason and not one byte
/// of the piece, and keeps the connection for the next request, which a valid token opens.
#[tokio::test]
async fn without_a_valid_token_a_checking_server_refuses_and_sends_no_bytes() {
    let key = TokenKey::new(b"peer-protocol-test-secret-0123456789").unwrap();
    let limits = ServerLimits {
        upload_slots: 2,
        upload_queue: 8,
        upload_rate: 0,
        sendfile: true,
    };
    let (addr, quic_addr, content, stop) = serving_with(limits, 2, Some(key.clone())).await;
    let hour = Duration::from_secs(3600);
    let other = TokenKey::new(b"not-the-cluster-secret-0123456789").unwrap();
    let refused: [(Vec<u8>, &str); 5] = [
        (Vec::new(), "no piece token"),
        (other.issue_for("sha256:11", 9, hour), "not valid"),
        (key.issue_for("sha256:22", 9, hour), "not valid"),
        (key.issue_for("sha256:11", 10, hour), "not valid"),
        (key.issue("sha256:11", 9, 1), "expired"),
    ];
    let with = |token: &[u8]| PieceRequest {
        token: token.to_vec(),
        ..request("sha256:11", 1)
    };

    // TCP: every refusal on one connection, then the piece on the same one.
    let mut s = tcp_conn(addr).await;
    for (token, why) in &refused {
        s.write_all(&encode_frame(&with(token))).await.unwrap();
        let r = tcp_answer(&mut s).await.unwrap();
        assert_eq!(status(&r), PieceStatus::Unauthorized, "{why}");
        assert_eq!(r.length, 0);
        assert!(r.reason.contains(why), "{:?} lacks {why:?}", r.reason);
    }
    let valid = key.issue_for("sha256:11", 9, hour);
    s.write_all(&encode_frame(&with(&valid))).await.unwrap();
    let r = tcp_answer(&mut s).await.unwrap();
    assert_eq!(status(&r), PieceStatus::Ok);
    let mut piece = vec![0u8; r.length as usize];
    s.read_exact(&mut piece).await.unwrap();
    assert!(
        piece[..] == content[64 << 10..],
        "the admitted peer gets the piece"
    );
    // After a refusal, nothing but the refusal's frame: a client that half-closes reads
    // exactly one header and then the end.
    let mut t = tcp_conn(addr).await;
    t.write_all(&encode_frame(&with(&[]))).await.unwrap();
    t.shutdown().await.unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    let len = frame_len(&rest).unwrap();
    assert_eq!(rest.len(), FRAME_HEADER_LEN + len, "no piece bytes follow");

    // QUIC: the same answers, one stream each.
    let client = quic::endpoint(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let conn = client
        .connect(quic_addr, quic::SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    for (token, why) in &refused {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_frame(&with(token))).await.unwrap();
        send.finish().unwrap();
        let all = recv.read_to_end(1 << 20).await.unwrap();
        let len = frame_len(&all).unwrap();
        assert_eq!(all.len(), FRAME_HEADER_LEN + len, "{why}: no piece bytes");
        let r: PieceResponse = decode(&all[FRAME_HEADER_LEN..]).unwrap();
        assert_eq!(status(&r), PieceStatus::Unauthorized, "{why}");
        assert!(r.reason.contains(why), "{:?} lacks {why:?}", r.reason);
    }
    assert_eq!(
        ask(&conn, &encode_frame(&with(&valid))).await,
        Some(PieceStatus::Ok)
    );

    // A fetching client sees the refusal as such, not as a lying parent.
    let link = Link::connect(addr, hour, hour).await.unwrap();
    let out = Output::new(64 << 10);
    let got = link
        .fetch_into(addr, &with(&[]), out.sink(0, 64 << 10))
        .await;
    assert!(
        matches!(&got, Err(FetchError::Unauthorized(m)) if m == "no piece token"),
        "{got:?}"
    );
    assert!(!link.is_closed(), "a refusal leaves the link up");
    stop.cancel();
}

#[tokio::test]
async fn pipelined_requests_queue_for_a_slot_and_come_back_in_order() {
    pipelined_requests(true).await;
}

/// The same with pieces read into buffers instead of sent from the file.
#[tokio::test]
async fn without_sendfile_pipelined_requests_come_back_the_same() {
    pipelined_requests(false).await;
}

async fn pipelined_requests(sendfile: bool) {
    // One upload slot and 32 requests outstanding over two connections: nobody is told
    // `Busy`, every piece arrives intact.
    let limits = ServerLimits {
        upload_slots: 1,
        upload_queue: 32,
        upload_rate: 0,
        sendfile,
    };
    let (addr, content, stop) = serving(limits, 16).await;
    let idle = Duration::from_secs(5);
    let links = [
        Link::connect(addr, idle, idle).await.unwrap(),
        Link::connect(addr, idle, idle).await.unwrap(),
    ];
    // Two copies of the blob are written, each piece at its place, by 32 requests at once.
    let out = Output::new(2 * content.len());
    let fetches = (0..32u32).map(|i| {
        let link = links[i as usize % 2].clone();
        let piece = i % 16;
        let sink = out.sink(u64::from(i) * (64 << 10), 64 << 10);
        async move {
            let digest = link
                .fetch_into(addr, &request("sha256:11", piece), sink)
                .await
                .unwrap();
            (piece, digest)
        }
    });
    for (piece, digest) in futures::future::join_all(fetches).await {
        let at = piece as usize * (64 << 10);
        assert_eq!(
            digest.digest,
            Digest::of(&content[at..at + (64 << 10)]),
            "piece {piece}"
        );
        assert_eq!(digest.vouch, None, "held without a vouch, sent without one");
    }
    let written = std::fs::read(out.path()).unwrap();
    assert!(
        written[..content.len()] == content[..],
        "first copy differs"
    );
    assert!(
        written[content.len()..] == content[..],
        "second copy differs"
    );
    stop.cancel();
}

#[tokio::test]
async fn a_full_upload_queue_answers_busy_and_the_link_stays_up() {
    let limits = ServerLimits {
        upload_slots: 1,
        upload_queue: 0,
        upload_rate: 64 << 10,
        sendfile: true,
    };
    // One slot, no queue, and 64 KiB/s (burst 64 KiB): the first piece leaves at once, the
    // second holds the slot for about a second while it is paced out; meanwhile a request
    // from another connection is refused.
    let (addr, _, stop) = serving(limits, 8).await;
    let idle = Duration::from_secs(10);
    let a = Link::connect(addr, idle, idle).await.unwrap();
    let b = Link::connect(addr, idle, idle).await.unwrap();
    let out = Output::new(3 << 16);
    let pipelined = tokio::spawn({
        let a = a.clone();
        let (s0, s1) = (out.sink(0, 64 << 10), out.sink(64 << 10, 64 << 10));
        async move {
            let (r0, r1) = (request("sha256:11", 0), request("sha256:11", 1));
            let (x, y) = tokio::join!(a.fetch_into(addr, &r0, s0), a.fetch_into(addr, &r1, s1));
            x.is_ok() && y.is_ok()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let busy = b
        .fetch_into(addr, &request("sha256:11", 2), out.sink(2 << 16, 64 << 10))
        .await;
    assert!(matches!(busy, Err(FetchError::Busy)), "{busy:?}");
    assert!(pipelined.await.unwrap(), "the pipelined pieces arrive");
    // Busy is an answer, not a failure: the same link serves the next request.
    assert!(!b.is_closed());
    stop.cancel();
}

/// A piece held with the supernode's vouch for its digest goes out with it (a child then
/// needs the digest from nowhere else); one held without goes out without; both for
/// sendfile and buffered answers.
#[tokio::test]
async fn a_vouched_piece_goes_out_with_its_vouch() {
    use damselfly_common::vouch::{DigestSigner, DigestVerifier};
    const PIECE: u32 = 64 << 10;
    let content: Vec<u8> = (0..2 * PIECE as usize).map(|i| (i % 253) as u8).collect();
    let mut file = tempfile::tempfile().unwrap();
    file.write_all(&content).unwrap();
    let task = Arc::new(ServedTask::new(
        Arc::new(file),
        content.len() as u64,
        PIECE,
        2,
    ));
    let signer = DigestSigner::generate().unwrap();
    let vouch = signer.vouch("sha256:11", 0, Digest::of(&content[..PIECE as usize]));
    task.mark_vouched(0, Some(vouch));
    task.mark(1);
    for sendfile in [true, false] {
        let limits = ServerLimits {
            upload_slots: 2,
            upload_queue: 4,
            upload_rate: 0,
            sendfile,
        };
        let server = Arc::new(PieceServer::new(limits, Fault::None));
        server.add("sha256:11", task.clone());
        let listener = tcp::listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(server.run_tcp(listener, stop.clone(), TaskTracker::new()));
        let idle = Duration::from_secs(5);
        let link = Link::connect(addr, idle, idle).await.unwrap();
        let out = Output::new(content.len());
        let first = link
            .fetch_into(addr, &request("sha256:11", 0), out.sink(0, PIECE.into()))
            .await
            .unwrap();
        assert_eq!(first.vouch, Some(vouch), "sendfile {sendfile}");
        DigestVerifier::new(&signer.public_key())
            .unwrap()
            .check("sha256:11", 0, &first.vouch.unwrap())
            .unwrap();
        assert_eq!(first.digest, vouch.digest);
        let second = link
            .fetch_into(
                addr,
                &request("sha256:11", 1),
                out.sink(PIECE.into(), PIECE.into()),
            )
            .await
            .unwrap();
        assert_eq!(second.vouch, None, "held without a vouch");
        stop.cancel();
    }
}
