//! dfdaemon's request parsing: the route (path, query, `X-Damselfly-Registry`) and `Range`
//! headers from any runtime or client on the node. Compiled from dfdaemon's own files (they
//! depend on nothing else of dfdaemon), so the fuzz build stays clear of RocksDB.
#![no_main]

#[allow(dead_code, clippy::all)]
#[path = "../../dfdaemon/src/range.rs"]
mod range;
#[allow(dead_code, clippy::all)]
#[path = "../../dfdaemon/src/upstream.rs"]
mod upstream;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // path \n query \n header \n range \n total
    let mut parts = text.splitn(5, '\n');
    let path = parts.next().unwrap_or_default();
    let query = parts.next().filter(|q| !q.is_empty());
    let header = parts.next().filter(|h| !h.is_empty());
    let range = parts.next();
    let total = parts
        .next()
        .and_then(|t| t.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let _ = upstream::route(path, query, header);
    match range::ByteRange::parse(range, total) {
        range::ByteRange::Part(span) => {
            assert!(
                span.start < span.end && span.end <= total,
                "{span:?} of {total}"
            )
        }
        range::ByteRange::Whole | range::ByteRange::Unsatisfiable => {}
    }
    let _ = range::ByteRange::wanted_first(range);
});
