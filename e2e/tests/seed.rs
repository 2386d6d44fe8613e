//! The supernode's offers of pieces no peer holds yet ("seed offers"), through its real HTTP
//! API: an offer holds one of the few slots of the supernode's uplink while its piece is
//! being sent, and frees it once the supernode has sent the last byte, not when the
//! receiver gets round to reporting the piece.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use damselfly_common::token::PIECE_TOKEN_HEADER;
use damselfly_e2e::{FaultyOrigin, Supernode, http, random_blob, wait_until};
use damselfly_proto::{
    PROTOCOL_VERSION, RegisterRequest, RegisterResponse, SyncRequest, SyncResponse, TaskState,
};
use prost::Message as _;

fn register(sn: &Supernode, url: &str, peer: u64) -> RegisterResponse {
    let body = RegisterRequest {
        version: PROTOCOL_VERSION,
        url: url.to_owned(),
        peer_id: peer,
        peer_addr: format!("127.0.0.1:{}", 9000 + peer),
        ..Default::default()
    }
    .encode_to_vec();
    let r = http::Request::post(format!("http://{}/api/v1/register", sn.addr()))
        .signed()
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    RegisterResponse::decode(&r.body[..]).unwrap()
}

/// One sync of `peer` reporting `new_pieces`; the pieces the supernode offers it.
fn sync(sn: &Supernode, task: &RegisterResponse, peer: u64, new_pieces: &[u32]) -> SyncResponse {
    let body = SyncRequest {
        version: PROTOCOL_VERSION,
        task_id: task.task_id.clone(),
        peer_id: peer,
        peer_addr: format!("127.0.0.1:{}", 9000 + peer),
        new_pieces: new_pieces.to_vec(),
        digests_from: task.piece_count,
        ..Default::default()
    }
    .encode_to_vec();
    let r = http::Request::post(format!("http://{}/api/v1/sync", sn.addr()))
        .signed()
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    SyncResponse::decode(&r.body[..]).unwrap()
}

fn offered(r: &SyncResponse) -> Vec<u32> {
    (0..r.seed_pieces.len() * 8)
        .filter(|&i| r.seed_pieces[i / 8] >> (i % 8) & 1 == 1)
        .map(|i| i as u32)
        .collect()
}

fn get_piece(sn: &Supernode, task: &RegisterResponse, peer: u64, index: u32) -> http::Response {
    http::Request::get(format!(
        "http://{}/api/v1/tasks/{}/pieces/{index}?peer={peer}",
        sn.addr(),
        task.task_id
    ))
    .header(PIECE_TOKEN_HEADER, hex::encode(&task.piece_token))
    .send()
    .unwrap()
}

#[test]
fn a_sent_seed_piece_frees_its_offer_before_its_receiver_reports_it() {
    let blob = random_blob(8 << 20, 91);
    let origin = FaultyOrigin::start(blob.clone(), Vec::new());
    let sn = Supernode::builder().start();
    let url = origin.blob_url("app/seed");
    let a = register(&sn, &url, 1);
    assert!(a.piece_count >= 4, "{a:?}");
    // The supernode's own fetch first, so what it holds does not limit the offers.
    assert!(
        wait_until(Duration::from_secs(20), || sync(&sn, &a, 1, &[]).state
            == TaskState::Complete as i32),
        "the supernode never finished its fetch"
    );
    // Slow start: nothing is held yet, so one piece is out at a time, and it is A's.
    let first = offered(&sync(&sn, &a, 1, &[]));
    assert_eq!(first, [0]);
    let b = register(&sn, &url, 2);
    assert_eq!(offered(&sync(&sn, &b, 2, &[])), Vec::<u32>::new());
    // A takes its piece (the whole body) and has not reported it yet.
    let piece = get_piece(&sn, &a, 1, 0);
    assert_eq!(piece.status, 200, "{}", piece.text());
    assert_eq!(piece.body, blob[..a.piece_size as usize]);
    // Its bytes have left the supernode: the slot is free for B, and the piece itself
    // stays A's (B is neither offered it nor sent it).
    let to_b = offered(&sync(&sn, &b, 2, &[]));
    assert!(!to_b.is_empty(), "no offer freed by the sent piece");
    assert!(!to_b.contains(&0), "{to_b:?}");
    let refused = get_piece(&sn, &b, 2, 0);
    assert_eq!(refused.status, 404, "{}", refused.text());
    // Once A reports it, anyone may have it.
    sync(&sn, &a, 1, &[0]);
    assert_eq!(get_piece(&sn, &b, 2, 0).status, 200);
}
