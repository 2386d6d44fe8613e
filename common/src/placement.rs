//! Which supernode a blob belongs to. Every dfdaemon and every supernode must agree, so the
//! rule lives here once: rendezvous (highest-random-weight) hashing. Each supernode address
//! gets a score for the blob, the first 8 bytes of `sha256(address, 0, digest)`; the highest
//! score is the blob's home and the rest, in falling order, are where its peers go when the
//! home is unreachable. Adding or removing one of `n` supernodes re-homes only the blobs that
//! move to or from it (about 1/n), where `digest mod n` re-homed most of them. The list's
//! order in a config file does not matter; every node must name each supernode by the same
//! address.

use crate::Digest;

/// The supernode list in a canonical order: sorted, duplicates removed.
pub fn normalize(supernodes: &[String]) -> Vec<String> {
    let mut v = supernodes.to_vec();
    v.sort();
    v.dedup();
    v
}

/// `supernode`'s score for `key`.
fn score(supernode: &str, key: &Digest) -> u64 {
    let mut bytes = Vec::with_capacity(supernode.len() + 1 + 32);
    bytes.extend_from_slice(supernode.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(&key.0);
    let digest = Digest::of(&bytes);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest.0[..8]);
    u64::from_be_bytes(head)
}

/// Indices of `supernodes` in the order `key`'s peers try them: its home first.
pub fn order<S: AsRef<str>>(key: &Digest, supernodes: &[S]) -> Vec<usize> {
    let mut scored: Vec<(u64, &str, usize)> = supernodes
        .iter()
        .enumerate()
        .map(|(i, s)| (score(s.as_ref(), key), s.as_ref(), i))
        .collect();
    // Highest score first; the address breaks a (vanishingly unlikely) tie the same way
    // everywhere.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, _, i)| i).collect()
}

/// Index of the home supernode of `key` among `supernodes`; 0 when there is at most one.
pub fn home_index<S: AsRef<str>>(key: &Digest, supernodes: &[S]) -> usize {
    order(key, supernodes).first().copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("supernode-{i}:8002")).collect()
    }

    fn key(i: u32) -> Digest {
        Digest::of(&i.to_be_bytes())
    }

    #[test]
    fn order_in_the_config_does_not_matter() {
        let a = normalize(&["b:1".into(), "a:1".into(), "b:1".into()]);
        assert_eq!(a, ["a:1", "b:1"]);
        assert_eq!(a, normalize(&["a:1".into(), "b:1".into()]));
        // The home is a property of the names, not of their positions.
        let mut shuffled = names(5);
        shuffled.reverse();
        for i in 0..100 {
            assert_eq!(
                names(5)[home_index(&key(i), &names(5))],
                shuffled[home_index(&key(i), &shuffled)]
            );
        }
    }

    #[test]
    fn blobs_spread_over_supernodes() {
        let sns = names(3);
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[home_index(&key(i), &sns)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 850), "{counts:?}");
        assert_eq!(home_index(&Digest::of(b"x"), &names(1)), 0);
        assert_eq!(home_index::<String>(&Digest::of(b"x"), &[]), 0);
    }

    #[test]
    fn the_fallback_order_names_every_supernode_once_home_first() {
        let sns = names(4);
        for i in 0..100 {
            let o = order(&key(i), &sns);
            assert_eq!(o[0], home_index(&key(i), &sns));
            let mut sorted = o.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, [0, 1, 2, 3]);
        }
    }

    #[test]
    fn adding_a_fourth_supernode_moves_about_a_quarter_of_the_blobs_and_only_to_it() {
        let (three, four) = (names(3), names(4));
        let total = 10_000;
        let mut moved = 0;
        for i in 0..total {
            let before = &three[home_index(&key(i), &three)];
            let after = &four[home_index(&key(i), &four)];
            if before != after {
                moved += 1;
                assert_eq!(after, &four[3], "blob {i} moved between old supernodes");
            }
        }
        let share = f64::from(moved) / f64::from(total);
        assert!((0.20..=0.30).contains(&share), "{share}");
        // Removing one moves only its own blobs, each to its next in order.
        for i in 0..1000 {
            let o = order(&key(i), &four);
            let without: Vec<&String> = four.iter().filter(|s| **s != four[o[0]]).collect();
            assert_eq!(without[home_index(&key(i), &without)], &four[o[1]]);
        }
    }
}
