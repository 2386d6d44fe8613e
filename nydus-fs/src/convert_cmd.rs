//! `nydus-fs convert`.

use std::collections::BTreeMap;
use std::io::{self, BufWriter};

use anyhow::{Context as _, Result, bail};
use nydus_fs::convert::{BlobWriter, Merger};
use nydus_fs::{ChunkSize, InodeKind, bootstrap, merkle};

use crate::location::{Location, RegistryArgs};
use crate::oci::{
    ANN_CHUNK_SIZE, ANN_FORMAT, ANN_ROOT, ANN_SOURCE, Descriptor, MAX_JSON_BLOB, MT_NYDUS_BLOB,
    MT_NYDUS_BOOTSTRAP, MT_NYDUS_PREFETCH, MT_OCI_MANIFEST, Manifest, Platform, check_tag,
};
use crate::source::ImageSource;
use crate::target::ImageTarget;

/// Bootstrap format version written in [`ANN_FORMAT`].
pub(crate) const FORMAT_VERSION: &str = "1";

/// What `nydus-fs convert` was asked to do.
pub(crate) struct ConvertArgs<'a> {
    /// Source: a layout directory or a registry reference.
    pub(crate) source: &'a str,
    /// Target: a layout directory or a registry reference.
    pub(crate) target: &'a str,
    /// The layout tag to convert, and the target's tag unless the target reference has one.
    pub(crate) tag: Option<&'a str>,
    pub(crate) chunk_size: ChunkSize,
    /// `os/arch[/variant]` to pick from an index (default: this machine's).
    pub(crate) platform: Option<&'a str>,
    pub(crate) registry: &'a RegistryArgs,
    /// A prefetch list (as `mount --record-trace` writes) to store in the image.
    pub(crate) prefetch: Option<&'a std::path::Path>,
}

pub(crate) fn run(args: &ConvertArgs<'_>) -> Result<()> {
    let prefetch = match args.prefetch {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the prefetch list {}", path.display()))?;
            Some(
                nydus_fs::prefetch::parse_list(&text)
                    .with_context(|| format!("prefetch list {}", path.display()))?,
            )
        }
        None => None,
    };
    let platform = match args.platform {
        Some(p) => Platform::parse(p)?,
        None => Platform::host(),
    };
    let source_loc = Location::parse(args.source)?;
    let target_loc = Location::parse(args.target)?;
    let src = ImageSource::open(&source_loc, args.registry)?;
    let layout_tag = match source_loc {
        Location::Layout(_) => args.tag,
        Location::Registry(_) => None,
    };
    let resolved = src.resolve(layout_tag, &platform)?;
    let manifest = &resolved.manifest;
    let out_tag = match &target_loc {
        Location::Registry(r) => r.tag.clone(),
        Location::Layout(_) => None,
    }
    .or_else(|| args.tag.map(str::to_owned))
    .or_else(|| resolved.tag.clone())
    .unwrap_or_else(|| "latest".to_owned());
    check_tag(&out_tag)?;
    let config = src
        .read_blob(&manifest.config, MAX_JSON_BLOB)
        .context("reading the image config")?;

    let mut dst = ImageTarget::open(&target_loc, args.registry)?;
    let mut merger = Merger::new(args.chunk_size);
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
        let mut reader = src
            .open_blob(layer)
            .with_context(|| format!("opening layer {i} ({})", layer.digest))?;
        let mut tmp = dst.temp_blob()?;
        let mut blob = BlobWriter::new(BufWriter::new(tmp.file()));
        let applied = merger.apply_layer(&mut reader, &mut blob);
        // Reading to the end verifies the layer's size and digest (see `open_blob`); after a
        // failed conversion it tells a corrupt layer from a hostile one.
        let stats = match (applied, io::copy(&mut reader, &mut io::sink())) {
            (Ok(stats), Ok(_)) => stats,
            (Err(e), Ok(_)) => {
                return Err(e).with_context(|| format!("converting layer {i} ({})", layer.digest));
            }
            (applied, Err(e)) => {
                let mut err = anyhow::Error::new(e)
                    .context(format!("layer {i} ({}) is corrupt", layer.digest));
                if let Err(a) = applied {
                    err = err.context(format!("converting layer {i} failed ({a})"));
                }
                return Err(err);
            }
        };
        let (digest, _) = blob
            .finish()
            .with_context(|| format!("writing the data blob of layer {i}"))?;
        written += stats.chunks_written;
        dedup += stats.chunks_deduplicated;
        holes += stats.holes;
        bytes_in += layer.size;
        if stats.blob.blob_index.is_some() {
            dst.add_data_blob(tmp, &digest)?;
            blob_descs.insert(digest, stats.blob.len);
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
        layers.push(Descriptor::new(MT_NYDUS_BLOB, digest, size));
    }
    if let Some(list) = &prefetch {
        // Keep the regular files this image has; a trace from another version of the image
        // may name files that are gone.
        let (kept, dropped): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) = list.iter().partition(|p| {
            tree.lookup(p)
                .and_then(|id| tree.inode(id))
                .is_some_and(|i| i.kind == InodeKind::File)
        });
        for p in &dropped {
            eprintln!(
                "warning: prefetch list: {} is not a regular file of this image; skipped",
                nydus_fs::prefetch::escape_path(p)
            );
        }
        let text = nydus_fs::prefetch::format_list(kept.iter().map(|p| p.as_slice()));
        let desc = dst.add_blob(MT_NYDUS_PREFETCH, text.as_bytes())?;
        bytes_out += desc.size;
        layers.push(desc);
    }
    let mut boot_desc = dst.add_blob(MT_NYDUS_BOOTSTRAP, &boot)?;
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

    let config = converted_config(&config, &layers)?;
    let mut config_desc = dst.add_blob(&manifest.config.media_type, &config)?;
    config_desc.annotations = manifest.config.annotations.clone();
    let new_manifest = Manifest {
        schema_version: 2,
        media_type: Some(MT_OCI_MANIFEST.to_owned()),
        config: config_desc,
        layers,
        annotations: BTreeMap::from([(ANN_SOURCE.to_owned(), resolved.desc.digest.clone())]),
    };
    let manifest_digest = dst.commit(&new_manifest, &out_tag, resolved.desc.platform.clone())?;

    let files = tree
        .inodes
        .iter()
        .filter(|i| i.kind == InodeKind::File)
        .count();
    let where_to = match &target_loc {
        Location::Layout(p) => format!("{}:{out_tag}", p.display()),
        Location::Registry(r) => r.with_tag(&out_tag).to_string(),
    };
    println!(
        "converted {} layers to {where_to}: {files} files, {written} chunks written, \
         {dedup} deduplicated, {holes} holes, {bytes_in} bytes in, {bytes_out} bytes out \
         (root {root}, manifest {manifest_digest})",
        manifest.layers.len(),
    );
    Ok(())
}

/// The source image's config with `rootfs` naming the converted layers: one diff id per
/// manifest layer, as containerd's unpacker requires before it asks a snapshotter about any
/// layer. The layers are not tars, so they have no uncompressed digest; each layer's own digest
/// stands for it, which also keeps the chain ids containerd derives apart from the source
/// image's. Everything else (entrypoint, env, user, history, ...) is the source's; the keys
/// come out sorted, so the same source gives the same bytes.
///
/// # Errors
/// The source config is not a JSON object.
fn converted_config(source: &[u8], layers: &[Descriptor]) -> Result<Vec<u8>> {
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(source).context("the image config is not a JSON object")?;
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    config.insert(
        "rootfs".to_owned(),
        serde_json::json!({"type": "layers", "diff_ids": diff_ids}),
    );
    serde_json::to_vec(&config).context("encoding the image config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_one_diff_id_per_converted_layer() {
        let source = br#"{"architecture":"amd64","config":{"Cmd":["sh"],"User":"1000"},
            "os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let layers = [
            Descriptor::new(MT_NYDUS_BLOB, "sha256:b1", 1),
            Descriptor::new(MT_NYDUS_BLOB, "sha256:b2", 1),
            Descriptor::new(MT_NYDUS_BOOTSTRAP, "sha256:b3", 1),
        ];
        let bytes = converted_config(source, &layers).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!(["sha256:b1", "sha256:b2", "sha256:b3"])
        );
        assert_eq!(config["rootfs"]["type"], "layers");
        assert_eq!(config["config"]["Cmd"][0], "sh");
        assert_eq!(config["config"]["User"], "1000");
        // Reproducible: the same input gives the same bytes.
        assert_eq!(converted_config(source, &layers).unwrap(), bytes);
        assert!(converted_config(b"[1]", &layers).is_err());
    }
}
