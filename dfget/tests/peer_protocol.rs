//! The QUIC piece server against hostile requests: it answers with an error status (or closes
//! the stream) and keeps serving.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};

use damselfly_proto::{
    FRAME_HEADER_LEN, PROTOCOL_VERSION, PieceRequest, PieceResponse, PieceStatus, decode,
    encode_frame, frame_len,
};
use dfget::{Engine, EngineConfig, quic};

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
    });
    assert_eq!(ask(&conn, &v2).await, Some(PieceStatus::BadRequest));

    // An unknown task.
    let unknown = encode_frame(&PieceRequest {
        version: PROTOCOL_VERSION,
        task_id: "sha256:00".into(),
        piece: 0,
        peer_id: 9,
    });
    assert_eq!(ask(&conn, &unknown).await, Some(PieceStatus::UnknownTask));

    // Still answering on the same connection after all that.
    assert_eq!(ask(&conn, &unknown).await, Some(PieceStatus::UnknownTask));
    server.shutdown(std::time::Duration::from_secs(1)).await;
}
