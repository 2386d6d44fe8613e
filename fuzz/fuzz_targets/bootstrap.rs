//! The nydus bootstrap decoder: metadata fetched from a registry or a peer, checked against
//! the root digest from the manifest. Any bytes must give a tree or an error, never a panic
//! or an unbounded allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_fs::{Digest, bootstrap};

/// The root of the committed fixture `nydus-fs/tests/fixtures/bootstrap-v1.bin` (also the
/// seed of the corpus), so inputs near it get past the canonical-encoding check too.
const ROOT: &str = "22732024cb3a8b1a24da8283f2d5bb8dcd77195b43f4b4d42c2c75210f2e5fbc";

fuzz_target!(|data: &[u8]| {
    let mut root = [0u8; 32];
    if hex::decode_to_slice(ROOT, &mut root).is_ok()
        && let Ok(tree) = bootstrap::decode(data, &Digest(root))
    {
        // What decodes must encode back to the same bytes (the format is canonical).
        assert_eq!(bootstrap::encode(&tree).ok().as_deref(), Some(data));
    }
});
