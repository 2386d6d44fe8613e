//! Peer identities (issue 13 part 4), with a real supernode spoken to in its own protocol:
//! an id is bound to the host it registered from and to a session token only that
//! registrant holds, so nobody syncs, leaves or registers as another peer; bans and
//! bad-piece reports count by host, so a banned liar stays out under new ids and one host
//! with many ids is one witness.
//!
//! All callers here are on loopback, where the supernode tells processes apart by the piece
//! port they advertise (docs/security.md): each "host" below is one such port.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use damselfly_e2e::{FaultyOrigin, Supernode, http, random_blob};
use damselfly_proto::{
    BadPiece, ErrorResponse, LeaveRequest, PROTOCOL_VERSION, RegisterRequest, RegisterResponse,
    SyncRequest, SyncResponse, decode,
};
use prost::Message as _;

struct Swarm {
    sn: Supernode,
    url: String,
    task: String,
    _origin: FaultyOrigin,
}

impl Swarm {
    fn start(seed: u64) -> Self {
        let origin = FaultyOrigin::start(random_blob(256 << 10, seed), Vec::new());
        let url = origin.blob_url("app/identity");
        let task = format!("sha256:{}", url.rsplit_once("sha256:").unwrap().1);
        Self {
            sn: Supernode::builder().start(),
            url,
            task,
            _origin: origin,
        }
    }

    fn post(&self, path: &str, body: Vec<u8>) -> http::Response {
        http::Request::post(format!("http://{}{path}", self.sn.addr()))
            .signed()
            .body(body)
            .send()
            .unwrap()
    }

    /// Registers `peer`, serving at `127.0.0.1:port`.
    fn register(&self, peer: u64, port: u16) -> Result<Vec<u8>, (u16, String)> {
        let r = self.post(
            "/api/v1/register",
            RegisterRequest {
                version: PROTOCOL_VERSION,
                url: self.url.clone(),
                peer_id: peer,
                peer_addr: format!("127.0.0.1:{port}"),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        answer::<RegisterResponse>(&r).map(|a| a.session_token)
    }

    fn sync(
        &self,
        peer: u64,
        port: u16,
        session: &[u8],
        bad: &[(u64, u32)],
    ) -> Result<SyncResponse, (u16, String)> {
        let r = self.post(
            "/api/v1/sync",
            SyncRequest {
                version: PROTOCOL_VERSION,
                task_id: self.task.clone(),
                peer_id: peer,
                peer_addr: format!("127.0.0.1:{port}"),
                bad_pieces: bad
                    .iter()
                    .map(|&(offender, piece)| BadPiece { offender, piece })
                    .collect(),
                session_token: session.to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        answer::<SyncResponse>(&r)
    }

    fn leave(&self, peer: u64, session: &[u8]) -> Result<(), (u16, String)> {
        let r = self.post(
            "/api/v1/leave",
            LeaveRequest {
                version: PROTOCOL_VERSION,
                task_id: self.task.clone(),
                peer_id: peer,
                session_token: session.to_vec(),
            }
            .encode_to_vec(),
        );
        if (200..300).contains(&r.status) {
            Ok(())
        } else {
            Err(refusal(&r))
        }
    }

    fn refusals(&self, reason: &str) -> f64 {
        damselfly_e2e::metric_sum(
            &self.sn.metrics().unwrap(),
            "damselfly_supernode_access_refusals_total",
            Some(&format!("reason=\"{reason}\"")),
        )
    }
}

fn refusal(r: &http::Response) -> (u16, String) {
    let code = decode::<ErrorResponse>(&r.body)
        .map(|e| e.code)
        .unwrap_or_else(|_| r.text());
    (r.status, code)
}

fn answer<M: prost::Message + Default>(r: &http::Response) -> Result<M, (u16, String)> {
    if r.status == 200 {
        Ok(decode::<M>(&r.body).unwrap())
    } else {
        Err(refusal(r))
    }
}

fn not_admitted() -> Result<(), (u16, String)> {
    Err((403, "NOT_ADMITTED".into()))
}

#[test]
fn a_peer_cannot_sync_or_leave_as_another() {
    let s = Swarm::start(101);
    let a = s.register(11, 9002).unwrap();
    let b = s.register(12, 9003).unwrap();
    assert_eq!(a.len(), 32, "a session token comes with the registration");
    assert_ne!(a, b);

    // Peer 12 (or anyone) syncing as 11: without a token, with its own, with a forged one.
    let mut forged = a.clone();
    forged[0] ^= 1;
    for token in [Vec::new(), b.clone(), forged] {
        assert_eq!(s.sync(11, 9002, &token, &[]).map(drop), not_admitted());
    }
    // Nor may it take 11 out of the swarm.
    assert_eq!(s.leave(11, &b), not_admitted());
    assert_eq!(s.refusals("SessionToken"), 4.0);
    // 11 itself: its syncs go through, and it was never out of the swarm.
    let r = s.sync(11, 9002, &a, &[]).unwrap();
    assert!(!r.readmitted, "the refused leave took the peer out");
    // Its own leave does take it out.
    s.leave(11, &a).unwrap();
    assert!(s.sync(11, 9002, &a, &[]).unwrap().readmitted);
}

#[test]
fn an_id_in_use_cannot_be_registered_from_another_host() {
    let s = Swarm::start(102);
    let a = s.register(11, 9002).unwrap();
    // The same id from another host: refused, and no session token for it.
    assert_eq!(
        s.register(11, 9005).map(drop),
        Err((409, "PEER_ID_TAKEN".into()))
    );
    assert_eq!(s.refusals("PeerIdTaken"), 1.0);
    // From its own host a registration may be repeated (a retry) and keeps the same token.
    assert_eq!(s.register(11, 9002).unwrap(), a);
    s.sync(11, 9002, &a, &[]).unwrap();
}

#[test]
fn a_banned_host_stays_out_under_new_ids_and_one_host_is_one_witness() {
    let s = Swarm::start(103);
    let liar = s.register(10, 9001).unwrap();
    let r1 = s.register(11, 9002).unwrap();
    // A second id of the same host as 11.
    let r1b = s.register(13, 9002).unwrap();
    let r2 = s.register(12, 9003).unwrap();
    s.sync(10, 9001, &liar, &[]).unwrap();

    // Two ids of one host accuse the liar: one witness, not enough.
    s.sync(11, 9002, &r1, &[(10, 0)]).unwrap();
    s.sync(13, 9002, &r1b, &[(10, 0)]).unwrap();
    s.sync(10, 9001, &liar, &[])
        .expect("banned on one host's word");

    // A second host: banned.
    s.sync(12, 9003, &r2, &[(10, 0)]).unwrap();
    let banned = Err((403, "BANNED".into()));
    assert_eq!(s.sync(10, 9001, &liar, &[]).map(drop), banned);
    // It cannot come back under its id or a new one from its host.
    assert_eq!(s.register(10, 9001).map(drop), banned);
    assert_eq!(s.register(20, 9001).map(drop), banned);
    assert_eq!(s.refusals("PeerBanned"), 2.0);
    assert!(s.sn.log_text().contains("registration refused"));
    // The honest peers stay.
    s.sync(11, 9002, &r1, &[]).unwrap();
    s.sync(12, 9003, &r2, &[]).unwrap();
    // Counted by the maintenance loop, on its next tick.
    assert!(damselfly_e2e::wait_until(Duration::from_secs(5), || {
        damselfly_e2e::metric_sum(
            &s.sn.metrics().unwrap(),
            "damselfly_supernode_banned_peers_total",
            None,
        ) == 1.0
    }));
}

/// While a cluster is upgraded (`cluster.enforce_session_tokens = false`), a peer of an older
/// release, which sends no session token, is let through and counted; a wrong token is still
/// refused.
#[test]
fn an_upgrading_supernode_lets_tokenless_peers_through_and_counts_them() {
    let origin = FaultyOrigin::start(random_blob(256 << 10, 104), Vec::new());
    let url = origin.blob_url("app/identity");
    let s = Swarm {
        sn: Supernode::builder()
            .args(["--cluster-enforce-session-tokens", "false"])
            .start(),
        task: format!("sha256:{}", url.rsplit_once("sha256:").unwrap().1),
        url,
        _origin: origin,
    };
    let a = s.register(11, 9002).unwrap();
    let b = s.register(12, 9003).unwrap();
    s.sync(11, 9002, &[], &[]).unwrap();
    assert_eq!(s.sync(11, 9002, &b, &[]).map(drop), not_admitted());
    s.sync(11, 9002, &a, &[]).unwrap();
    s.leave(12, &[]).unwrap();
    let accepted = damselfly_e2e::metric_sum(
        &s.sn.metrics().unwrap(),
        "damselfly_supernode_session_token_missing_accepted_total",
        None,
    );
    assert_eq!(accepted, 2.0);
    assert_eq!(s.refusals("SessionToken"), 1.0);
}
