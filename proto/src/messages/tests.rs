use prost::Message;

use super::*;
use crate::{MAX_MESSAGE_LEN, decode, encode_frame, frame_len};

fn register() -> RegisterRequest {
    RegisterRequest {
        version: PROTOCOL_VERSION,
        url: "http://127.0.0.1:5000/v2/a/blobs/sha256:00".into(),
        headers: vec![Header {
            name: "Authorization".into(),
            value: "Bearer x".into(),
        }],
        digest: String::new(),
        peer_id: 7,
        peer_addr: "[::1]:65000".into(),
        holder: false,
        takeover: false,
    }
}

#[test]
fn register_round_trip_and_validate() {
    let msg = register();
    let bytes = msg.encode_to_vec();
    let back: RegisterRequest = decode(&bytes).unwrap();
    assert_eq!(back, msg);
    back.validate().unwrap();
}

#[test]
fn wrong_version_is_refused() {
    let mut msg = register();
    msg.version = 2;
    assert_eq!(
        msg.validate(),
        Err(DecodeError::Version {
            got: 2,
            expected: PROTOCOL_VERSION
        })
    );
}

#[test]
fn too_many_headers_are_refused() {
    let mut msg = register();
    msg.headers = vec![
        Header {
            name: "X".into(),
            value: "y".into()
        };
        MAX_HEADERS + 1
    ];
    assert!(matches!(
        msg.validate(),
        Err(DecodeError::Invalid {
            field: "headers",
            ..
        })
    ));
}

#[test]
fn bad_peer_addr_is_refused() {
    let mut msg = register();
    msg.peer_addr = "not an address".into();
    assert!(msg.validate().is_err());
}

#[test]
fn oversize_input_is_refused_before_decoding() {
    let big = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert!(matches!(
        decode::<RegisterRequest>(&big),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn garbage_and_truncated_input_errors_without_panicking() {
    let bytes = register().encode_to_vec();
    for cut in 0..bytes.len() {
        // Any prefix either decodes (prost tolerates missing fields) or errors; never panics.
        let _ = decode::<RegisterRequest>(&bytes[..cut]);
    }
    let garbage = [
        0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02,
    ];
    assert!(decode::<SyncRequest>(&garbage).is_err());
    // Pseudo-random bytes through every decoder.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..512 {
        let buf: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let _ = decode::<RegisterRequest>(&buf).map(|m| m.validate());
        let _ = decode::<SyncRequest>(&buf).map(|m| m.validate());
        let _ = decode::<SyncResponse>(&buf).map(|m| m.validate());
        let _ = decode::<PieceRequest>(&buf).map(|m| m.validate());
        let _ = decode::<PieceResponse>(&buf).map(|m| m.validate());
    }
}

#[test]
fn frame_header_limits() {
    let msg = PieceRequest {
        version: PROTOCOL_VERSION,
        task_id: "sha256:ab".into(),
        piece: 3,
        peer_id: 1,
        token: vec![1; 41],
        streamed: false,
    };
    let frame = encode_frame(&msg);
    let len = frame_len(&frame).unwrap();
    assert_eq!(len + 4, frame.len());
    let back: PieceRequest = decode(&frame[4..]).unwrap();
    assert_eq!(back, msg);

    assert!(matches!(
        frame_len(&[0, 1]),
        Err(DecodeError::Truncated { need: 4, have: 2 })
    ));
    assert!(matches!(
        frame_len(&u32::MAX.to_be_bytes()),
        Err(DecodeError::TooLarge { .. })
    ));
}

#[test]
fn register_response_geometry_is_checked() {
    let mut r = RegisterResponse {
        version: PROTOCOL_VERSION,
        task_id: "sha256:ab".into(),
        content_length: 10 << 20,
        piece_size: 4 << 20,
        piece_count: 3,
        digest: String::new(),
        piece_token: vec![1; 41],
        digest_key: vec![3; 32],
        session_token: vec![4; 32],
        copy: SupernodeCopy::Started as i32,
    };
    r.validate().unwrap();
    // A supernode that predates the field, and one newer than this peer, are both fine.
    r.copy = 0;
    r.validate().unwrap();
    r.copy = 99;
    r.validate().unwrap();
    assert_eq!(r.copy(), SupernodeCopy::Unspecified);
    r.copy = SupernodeCopy::Started as i32;
    r.piece_count = 2;
    assert!(r.validate().is_err());
    r.piece_count = 3;
    r.piece_size = 3 << 20;
    assert!(r.validate().is_err());
    r.piece_size = 4 << 20;
    r.digest_key.pop();
    assert!(
        matches!(
            r.validate(),
            Err(DecodeError::Invalid {
                field: "digest_key",
                ..
            })
        ),
        "a public key of 31 bytes"
    );
}

#[test]
fn sync_response_digest_length_is_checked() {
    let mut r = SyncResponse {
        version: PROTOCOL_VERSION,
        state: TaskState::Running as i32,
        digests: vec![vec![0; 32]],
        ..Default::default()
    };
    r.validate().unwrap();
    r.digests.push(vec![0; 31]);
    assert!(r.validate().is_err());
}

#[test]
fn piece_response_length_is_bounded() {
    let r = PieceResponse {
        version: PROTOCOL_VERSION,
        status: PieceStatus::Ok as i32,
        length: 1 << 40,
        ..PieceResponse::default()
    };
    assert!(r.validate().is_err());
}

#[test]
fn a_vouched_digest_comes_whole_or_not_at_all() {
    let mut r = PieceResponse {
        version: PROTOCOL_VERSION,
        status: PieceStatus::Ok as i32,
        length: 1 << 20,
        ..PieceResponse::default()
    };
    r.validate().unwrap();
    r.digest = vec![7; 32];
    assert!(r.validate().is_err(), "a digest without its signature");
    r.signature = vec![9; 64];
    r.validate().unwrap();
    r.signature.pop();
    assert!(r.validate().is_err(), "a short signature");
    let back = PieceResponse::decode(r.encode_to_vec().as_slice()).unwrap();
    assert_eq!(back.digest, vec![7; 32]);
}

#[test]
fn tokens_and_refusal_reasons_are_bounded() {
    let mut req = PieceRequest {
        version: PROTOCOL_VERSION,
        task_id: "sha256:ab".into(),
        piece: 0,
        peer_id: 1,
        token: vec![0; MAX_TOKEN_LEN],
        streamed: false,
    };
    req.validate().unwrap();
    req.token.push(0);
    assert!(matches!(
        req.validate(),
        Err(DecodeError::Invalid { field: "token", .. })
    ));
    let mut sub = AnnounceRequest {
        version: PROTOCOL_VERSION,
        task_id: "sha256:ab".into(),
        peer_id: 1,
        token: Vec::new(),
        arriving: false,
    };
    // No token is well formed: the server decides whether it needs one.
    sub.validate().unwrap();
    sub.token = vec![0; MAX_TOKEN_LEN + 1];
    assert!(sub.validate().is_err());
    let mut refusal = PieceResponse {
        version: PROTOCOL_VERSION,
        status: PieceStatus::Unauthorized as i32,
        length: 0,
        reason: "piece token expired 3 s ago".into(),
        ..PieceResponse::default()
    };
    refusal.validate().unwrap();
    refusal.reason = "x".repeat(MAX_REASON_LEN + 1);
    assert!(refusal.validate().is_err());
    let mut a = Announcement {
        version: PROTOCOL_VERSION,
        status: PieceStatus::Unauthorized as i32,
        reason: "no piece token".into(),
        ..Announcement::default()
    };
    a.validate().unwrap();
    a.reason = "x".repeat(MAX_REASON_LEN + 1);
    assert!(a.validate().is_err());
}

/// A request from a peer that predates tokens decodes with an empty token (and so is
/// refused by a server that checks them, rather than misread), and a token-carrying
/// request still decodes at such a peer (the unknown field is skipped).
#[test]
fn old_and_new_piece_requests_decode_both_ways() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldPieceRequest {
        #[prost(uint32, tag = "1")]
        version: u32,
        #[prost(string, tag = "2")]
        task_id: String,
        #[prost(uint32, tag = "3")]
        piece: u32,
        #[prost(uint64, tag = "4")]
        peer_id: u64,
    }
    let old = OldPieceRequest {
        version: PROTOCOL_VERSION,
        task_id: "sha256:ab".into(),
        piece: 2,
        peer_id: 5,
    };
    let new: PieceRequest = decode(&old.encode_to_vec()).unwrap();
    new.validate().unwrap();
    assert!(new.token.is_empty());
    let with_token = PieceRequest {
        token: vec![1; 41],
        ..new
    };
    let back: OldPieceRequest = decode(&with_token.encode_to_vec()).unwrap();
    assert_eq!(back, old);
    assert_eq!(PieceStatus::try_from(6), Ok(PieceStatus::Unauthorized));
}
