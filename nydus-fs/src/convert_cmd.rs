//! `nydus-fs convert`.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use nydus_fs::convert::{BlobWriter, Merger};
use nydus_fs::{ChunkSize, InodeKind, bootstrap, merkle};

use crate::oci::{
    ANN_CHUNK_SIZE, ANN_FORMAT, ANN_REF_NAME, ANN_ROOT, ANN_SOURCE, HashingReader, Index,
    MT_NYDUS_BLOB, MT_NYDUS_BOOTSTRAP, MT_OCI_INDEX, MT_OCI_MANIFEST, Manifest, OciDir, check_tag,
    parse_digest,
};

/// Bootstrap format version written in [`ANN_FORMAT`].
pub(crate) const FORMAT_VERSION: &str = "1";

pub(crate) fn run(
    source: &Path,
    target: &Path,
    tag: Option<&str>,
    chunk_size: ChunkSize,
) -> Result<()> {
    let src = OciDir::open(source)?;
    let (found_tag, manifest_desc, manifest) = src.resolve(tag)?;
    let out_tag = tag
        .map(str::to_owned)
        .or(found_tag)
        .unwrap_or_else(|| "latest".to_owned());
    check_tag(&out_tag)?;
    let config = src.read_config(&manifest)?;

    let dst = OciDir::create(target)?;
    // Read the existing index first: a corrupt one fails before any work.
    let old_index = dst.read_index()?;

    let mut merger = Merger::new(chunk_size);
    let (mut written, mut dedup, mut holes, mut bytes_in) = (0u64, 0u64, 0u64, 0u64);
    let mut blob_descs = BTreeMap::new();
    for (i, layer) in manifest.layers.iter().enumerate() {
        let mt = layer.media_type.as_str();
        if !mt.contains("tar") || mt.contains("zstd") {
            bail!(
                "layer {i} ({}): unsupported media type {mt:?} (want plain or gzip tar)",
                layer.digest
            );
        }
        let expected = parse_digest(&layer.digest)?;
        let (file, path) = src.open_blob(layer)?;
        let mut reader = HashingReader::new(BufReader::new(file));
        let mut tmp = dst.temp_blob()?;
        let mut blob = BlobWriter::new(BufWriter::new(tmp.file()));
        let stats = merger
            .apply_layer(&mut reader, &mut blob)
            .with_context(|| format!("converting layer {i} ({})", layer.digest))?;
        let (digest, len) = blob
            .finish()
            .with_context(|| format!("writing the data blob of layer {i}"))?;
        let (actual, size) = reader
            .finish()
            .with_context(|| format!("reading layer {i} ({})", path.display()))?;
        ensure!(
            actual == expected && size == layer.size,
            "layer {i}: blob {} ({}) does not match its descriptor: content is {size} bytes \
             with digest {actual}, descriptor says {} bytes",
            layer.digest,
            path.display(),
            layer.size
        );
        written += stats.chunks_written;
        dedup += stats.chunks_deduplicated;
        holes += stats.holes;
        bytes_in += size;
        if stats.blob.blob_index.is_some() {
            tmp.persist(&dst.blob_path(&digest))?;
            blob_descs.insert(digest, len);
        }
    }
    let (tree, _) = merger.finish().context("finishing the merged tree")?;
    let root = merkle::root_digest(&tree).context("computing the merkle root")?;
    let boot = bootstrap::encode(&tree).context("encoding the bootstrap")?;

    let mut layers = Vec::new();
    let mut bytes_out = 0;
    for digest in &tree.blobs {
        let size = blob_descs[digest];
        bytes_out += size;
        layers.push(crate::oci::Descriptor {
            media_type: MT_NYDUS_BLOB.to_owned(),
            digest: digest.to_string(),
            size,
            annotations: BTreeMap::new(),
            platform: None,
        });
    }
    let mut boot_desc = dst.write_blob(MT_NYDUS_BOOTSTRAP, &boot)?;
    bytes_out += boot_desc.size;
    boot_desc.annotations = BTreeMap::from([
        (ANN_ROOT.to_owned(), root.to_string()),
        (
            ANN_CHUNK_SIZE.to_owned(),
            tree.chunk_size.bytes().to_string(),
        ),
        (ANN_FORMAT.to_owned(), FORMAT_VERSION.to_owned()),
    ]);
    layers.push(boot_desc);

    let mut config_desc = dst.write_blob(&manifest.config.media_type, &config)?;
    config_desc.annotations = manifest.config.annotations.clone();
    let new_manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.to_owned()),
        config: config_desc,
        layers,
        annotations: BTreeMap::from([(ANN_SOURCE.to_owned(), manifest_desc.digest.clone())]),
    };
    let json = serde_json::to_vec_pretty(&new_manifest).context("serialising the manifest")?;
    let mut manifest_out = dst.write_blob(MT_OCI_MANIFEST, &json)?;
    manifest_out.annotations = BTreeMap::from([(ANN_REF_NAME.to_owned(), out_tag.clone())]);
    manifest_out.platform = manifest_desc.platform.clone();

    let mut index = old_index.unwrap_or_else(|| Index {
        schema_version: 2,
        media_type: Some(MT_OCI_INDEX.to_owned()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    });
    index
        .manifests
        .retain(|d| d.annotations.get(ANN_REF_NAME) != Some(&out_tag));
    index.manifests.push(manifest_out.clone());
    dst.write_index(&index)?;

    let files = tree
        .inodes
        .iter()
        .filter(|i| i.kind == InodeKind::File)
        .count();
    println!(
        "converted {} layers to {}:{out_tag}: {files} files, {written} chunks written, \
         {dedup} deduplicated, {holes} holes, {bytes_in} bytes in, {bytes_out} bytes out \
         (root {root}, manifest {})",
        manifest.layers.len(),
        target.display(),
        manifest_out.digest
    );
    Ok(())
}
