//! The peer protocol's decoders: frame headers, connection preambles, and every message
//! (decoded, then validated) from bytes a peer or a stranger sends. Must never panic.
#![no_main]

use damselfly_proto::{
    AnnounceRequest, Announcement, LeaveRequest, PREAMBLE_LEN, PieceRequest, PieceResponse,
    RegisterRequest, RegisterResponse, SyncRequest, SyncResponse, check_any_preamble, decode,
    frame_len,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = frame_len(data);
    if let Some(p) = data.get(..PREAMBLE_LEN) {
        let mut preamble = [0u8; PREAMBLE_LEN];
        preamble.copy_from_slice(p);
        let _ = check_any_preamble(&preamble);
    }
    // The first byte picks the message, the rest is its body (so one input reaches one
    // decoder deeply rather than all of them shallowly).
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 10 {
        0 => drop(decode::<RegisterRequest>(body).map(|m| m.validate())),
        1 => drop(decode::<RegisterResponse>(body).map(|m| m.validate())),
        2 => drop(decode::<SyncRequest>(body).map(|m| m.validate())),
        3 => drop(decode::<SyncResponse>(body).map(|m| m.validate())),
        4 => drop(decode::<LeaveRequest>(body).map(|m| m.validate())),
        5 => drop(decode::<PieceRequest>(body).map(|m| m.validate())),
        6 => drop(decode::<AnnounceRequest>(body).map(|m| m.validate())),
        7 => drop(decode::<Announcement>(body).map(|m| m.validate())),
        8 => drop(decode::<PieceResponse>(body).map(|m| m.validate())),
        _ => {
            // A frame as it comes off a TCP connection: header, then that many bytes.
            if let Ok(len) = frame_len(body)
                && let Some(msg) = body.get(4..4 + len)
            {
                drop(decode::<PieceRequest>(msg).map(|m| m.validate()));
            }
        }
    }
});
