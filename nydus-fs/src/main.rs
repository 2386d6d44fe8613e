//! `nydus-fs`: convert OCI images to the lazy nydus format, inspect and check them.
//!
//! ```text
//! nydus-fs convert SOURCE TARGET [--tag TAG] [--chunk-size 1MiB] [--platform OS/ARCH]
//! nydus-fs inspect IMAGE [--tag TAG] [--files]
//! nydus-fs check   IMAGE [--tag TAG]
//! nydus-fs mount   IMAGE MOUNTPOINT [--tag TAG] [--cache-dir DIR] [--record-trace FILE]
//!     registry flags: [--plain-http] [--creds USER:PASSWORD] [--via URL] [--ca-file PEM]
//! ```
//!
//! SOURCE, TARGET and IMAGE are OCI image layout directories or registry references
//! (`localhost:5000/app:v1`); see `location.rs` for how an argument is classified.
//!
//! A converted image is an OCI image manifest whose config is the source's with one
//! `rootfs.diff_ids` entry per converted layer, and whose layers are the nydus data blobs
//! (`nydus_fs::media::BLOB`) in bootstrap blob-table order, the optional prefetch list, then the
//! bootstrap (`nydus_fs::media::BOOTSTRAP`) annotated with `io.damselfly.nydus.root`,
//! `io.damselfly.nydus.chunk-size` and `io.damselfly.nydus.format`. See `docs/format.md`.
//!
//! Exit status: 0 on success, 1 on any error or failed check, 2 on a usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nydus_fs::ChunkSize;

mod convert_cmd;
mod image;
mod location;
mod mount;
mod oci;
mod source;
mod target;

use location::RegistryArgs;

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
    /// Convert an OCI image to a nydus image. SOURCE and TARGET are each an OCI image layout
    /// directory or a registry reference (`localhost:5000/app:v1`, `docker://…`; `oci:DIR`
    /// forces a directory).
    Convert {
        /// Source: OCI image layout directory or registry reference.
        source: String,
        /// Target: OCI image layout directory (created if missing; other tags are kept) or
        /// registry reference (the manifest is pushed last, after every blob).
        target: String,
        /// Tag to convert in a layout source (default: its first manifest), and the target's
        /// tag unless the target reference names one (default: the source's tag, or
        /// `latest`).
        #[arg(long)]
        tag: Option<String>,
        /// Chunk size: a power of two from 4KiB to 16MiB (suffixes K, KiB, M, MiB or bytes).
        #[arg(long, default_value = "1MiB", value_parser = parse_chunk_size)]
        chunk_size: ChunkSize,
        /// Platform to take from a multi-platform source, `os/arch[/variant]` (default: this
        /// machine's).
        #[arg(long, value_name = "OS/ARCH")]
        platform: Option<String>,
        /// Store this prefetch list (files in first-access order, as `mount --record-trace`
        /// writes) in the image; `mount` fetches those files in the background.
        #[arg(long, value_name = "FILE")]
        prefetch: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Verify the bootstrap of a nydus image against its annotated root and summarise it.
    Inspect {
        /// The nydus image: OCI image layout directory or registry reference.
        image: String,
        /// Tag of the image in a layout (default: the first manifest).
        #[arg(long)]
        tag: Option<String>,
        /// Also list every path: path, kind, mode, uid:gid, size, target.
        #[arg(long)]
        files: bool,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// As inspect, then read, decompress and verify every chunk of every file.
    Check {
        /// The nydus image: OCI image layout directory or registry reference.
        image: String,
        /// Tag of the image in a layout (default: the first manifest).
        #[arg(long)]
        tag: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Mount a nydus image read-only over FUSE, fetching each chunk on first read. Runs in the
    /// foreground until SIGTERM/SIGINT (which unmount) or an external unmount.
    Mount {
        /// The nydus image: OCI image layout directory or registry reference.
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
        /// When a read's widening reaches the end of its file, also fetch the chunks stored
        /// after it in the blob (the next files, usually of the same directory) up to this many
        /// compressed bytes, within --fetch-size: one request for many small files. 0: off.
        #[arg(long, default_value = "1MiB", value_parser = parse_size)]
        fetch_neighbours: u64,
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
        #[command(flatten)]
        registry: RegistryArgs,
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
    let bytes = parse_size(s)?;
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
            platform,
            prefetch,
            registry,
        } => convert_cmd::run(&convert_cmd::ConvertArgs {
            source: &source,
            target: &target,
            tag: tag.as_deref(),
            chunk_size,
            platform: platform.as_deref(),
            registry: &registry,
            prefetch: prefetch.as_deref(),
        })
        .map(|()| true),
        Command::Inspect {
            image,
            tag,
            files,
            registry,
        } => image::inspect(&image, tag.as_deref(), files, &registry).map(|()| true),
        Command::Check {
            image,
            tag,
            registry,
        } => image::check(&image, tag.as_deref(), &registry),
        Command::Mount {
            image,
            mountpoint,
            tag,
            cache_dir,
            memory_cache,
            fetch_size,
            fetch_neighbours,
            max_requests,
            record_trace,
            no_prefetch,
            registry,
        } => mount::run(&mount::MountArgs {
            image,
            tag,
            mountpoint,
            cache_dir,
            memory_cache,
            fetch_size,
            neighbours: fetch_neighbours,
            max_requests,
            record_trace,
            prefetch: !no_prefetch,
            registry,
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
