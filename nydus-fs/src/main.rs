//! `nydus-fs`: convert local OCI image layouts to the lazy nydus format, inspect and check them.
//!
//! ```text
//! nydus-fs convert SOURCE_DIR TARGET_DIR [--tag TAG] [--chunk-size 1MiB]
//! nydus-fs inspect TARGET_DIR [--tag TAG] [--files]
//! nydus-fs check   TARGET_DIR [--tag TAG]
//! nydus-fs mount   IMAGE MOUNTPOINT [--tag TAG] [--cache-dir DIR] [--record-trace FILE]
//! ```
//!
//! A converted image is an OCI image manifest whose config is the source's config blob, and
//! whose layers are the nydus data blobs (`application/vnd.damselfly.nydus.blob.v1+zstd`) in
//! bootstrap blob-table order, followed by the bootstrap
//! (`application/vnd.damselfly.nydus.bootstrap.v1`) annotated with `io.damselfly.nydus.root`,
//! `io.damselfly.nydus.chunk-size` and `io.damselfly.nydus.format`. See `oci.rs`.
//!
//! Exit status: 0 on success, 1 on any error or failed check, 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nydus_fs::ChunkSize;

mod convert_cmd;
mod image;
mod mount;
mod oci;

#[derive(Parser)]
#[command(
    name = "nydus-fs",
    version,
    about = "Convert, inspect and check nydus lazy images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an OCI image layout to a nydus image in another OCI image layout.
    Convert {
        /// Source OCI image layout directory.
        source: PathBuf,
        /// Target OCI image layout directory (created if missing; other tags are kept).
        target: PathBuf,
        /// Tag to convert (`org.opencontainers.image.ref.name`), also the target's tag.
        /// Default: the source's first manifest, tagged with its own name or `latest`.
        #[arg(long)]
        tag: Option<String>,
        /// Chunk size: a power of two from 4KiB to 16MiB (suffixes K, KiB, M, MiB or bytes).
        #[arg(long, default_value = "1MiB", value_parser = parse_chunk_size)]
        chunk_size: ChunkSize,
    },
    /// Verify the bootstrap of a nydus image against its annotated root and summarise it.
    Inspect {
        /// OCI image layout directory holding the nydus image.
        dir: PathBuf,
        /// Tag of the image (default: the first manifest).
        #[arg(long)]
        tag: Option<String>,
        /// Also list every path: path, kind, mode, uid:gid, size, target.
        #[arg(long)]
        files: bool,
    },
    /// As inspect, then read, decompress and verify every chunk of every file.
    Check {
        /// OCI image layout directory holding the nydus image.
        dir: PathBuf,
        /// Tag of the image (default: the first manifest).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Mount a nydus image read-only over FUSE, fetching each chunk on first read. Runs in the
    /// foreground until SIGTERM/SIGINT (which unmount) or an external unmount.
    Mount {
        /// The image: an OCI image layout directory holding the nydus image.
        image: String,
        /// Where to mount it (an existing directory).
        mountpoint: PathBuf,
        /// Tag of the image in a layout (default: the first manifest).
        #[arg(long)]
        tag: Option<String>,
        /// Directory of verified chunks kept across mounts (shared by images; chunks are named
        /// by digest). Without it chunks are kept in memory only.
        #[arg(long, env = "NYDUS_FS_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Memory for recently used chunks.
        #[arg(long, default_value = "64MiB", value_parser = parse_size)]
        memory_cache: u64,
        /// Largest ranged request (compressed bytes): a read is widened to the following
        /// chunks of the same file up to this, and adjacent chunks share one request.
        #[arg(long, default_value = "4MiB", value_parser = parse_size)]
        fetch_size: u64,
        /// Ranged requests in flight at once.
        #[arg(long, default_value_t = 8)]
        max_requests: usize,
        /// Record the regular files opened, in first-open order, to FILE (a prefetch list for
        /// `convert --prefetch`).
        #[arg(long, value_name = "FILE")]
        record_trace: Option<PathBuf>,
        /// Do not fetch the image's prefetch list in the background.
        #[arg(long)]
        no_prefetch: bool,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 64MiB, 512KiB, 4096)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB, GiB)")),
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_chunk_size(s: &str) -> Result<ChunkSize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 1MiB, 64KiB, 4096)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        other => return Err(format!("unknown size unit {other:?} (use K, KiB, M, MiB)")),
    };
    let bytes = num
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if !bytes.is_power_of_two() {
        return Err(format!("{s:?} ({bytes} bytes) is not a power of two"));
    }
    ChunkSize::from_log2(bytes.trailing_zeros())
        .map_err(|_| format!("{s:?} ({bytes} bytes) is outside 4KiB..=16MiB"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Convert {
            source,
            target,
            tag,
            chunk_size,
        } => convert_cmd::run(&source, &target, tag.as_deref(), chunk_size).map(|()| true),
        Command::Inspect { dir, tag, files } => {
            image::inspect(&dir, tag.as_deref(), files).map(|()| true)
        }
        Command::Check { dir, tag } => image::check(&dir, tag.as_deref()),
        Command::Mount {
            image,
            mountpoint,
            tag,
            cache_dir,
            memory_cache,
            fetch_size,
            max_requests,
            record_trace,
            no_prefetch,
        } => mount::run(&mount::MountArgs {
            image,
            tag,
            mountpoint,
            cache_dir,
            memory_cache,
            fetch_size,
            max_requests,
            record_trace,
            prefetch: !no_prefetch,
        })
        .map(|()| true),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_chunk_size;

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size("1MiB").unwrap().bytes(), 1 << 20);
        assert_eq!(parse_chunk_size("4KiB").unwrap().bytes(), 4096);
        assert_eq!(parse_chunk_size("16M").unwrap().bytes(), 16 << 20);
        assert_eq!(parse_chunk_size("65536").unwrap().bytes(), 65536);
        assert!(parse_chunk_size("2KiB").is_err());
        assert!(parse_chunk_size("32MiB").is_err());
        assert!(parse_chunk_size("3MiB").is_err());
        assert!(parse_chunk_size("1GiB").is_err());
        assert!(parse_chunk_size("abc").is_err());
        assert!(parse_chunk_size("99999999999999999999M").is_err());
    }
}
