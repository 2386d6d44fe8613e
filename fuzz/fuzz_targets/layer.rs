//! The layer merger's tar handling: a layer from a registry (tar, or gzip'd tar) applied to
//! an image tree. Hostile entries (paths escaping the root, links, whiteouts, huge headers)
//! must give an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nydus_fs::{
    ChunkSize,
    convert::{BlobWriter, Merger},
};

fuzz_target!(|data: &[u8]| {
    let Ok(size) = ChunkSize::from_log2(ChunkSize::MIN_LOG2) else {
        return;
    };
    let mut merger = Merger::new(size);
    let mut blob = BlobWriter::new(Vec::new());
    if merger.apply_layer(data, &mut blob).is_ok() {
        let _ = merger.finish();
    }
});
