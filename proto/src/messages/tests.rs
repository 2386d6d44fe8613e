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
    };
    r.validate().unwrap();
    r.piece_count = 2;
    assert!(r.validate().is_err());
    r.piece_count = 3;
    r.piece_size = 3 << 20;
    assert!(r.validate().is_err());
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
    };
    assert!(r.validate().is_err());
}
