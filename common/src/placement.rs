//! Which supernode a blob belongs to. Every dfdaemon and every supernode must agree, so the
//! rule lives here once: the supernode list is sorted and deduplicated (its order in a config
//! file does not matter), and a blob goes to entry `first 8 bytes of its digest mod n`.

use crate::Digest;

/// The supernode list in placement order: sorted, duplicates removed.
pub fn normalize(supernodes: &[String]) -> Vec<String> {
    let mut v = supernodes.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Index of the home supernode of `key` among `n` (normalised) supernodes; 0 when `n <= 1`.
pub fn home_index(key: &Digest, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let mut head = [0u8; 8];
    head.copy_from_slice(&key.0[..8]);
    (u64::from_be_bytes(head) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_in_the_config_does_not_matter() {
        let a = normalize(&["b:1".into(), "a:1".into(), "b:1".into()]);
        assert_eq!(a, ["a:1", "b:1"]);
        assert_eq!(a, normalize(&["a:1".into(), "b:1".into()]));
    }

    #[test]
    fn blobs_spread_over_supernodes() {
        let mut counts = [0usize; 3];
        for i in 0..300u32 {
            counts[home_index(&Digest::of(&i.to_be_bytes()), 3)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        assert_eq!(home_index(&Digest::of(b"x"), 1), 0);
    }
}
