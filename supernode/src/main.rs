//! `supernode`: the cluster's seed and tracker. See the library docs.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use supernode::{App, Config, config::Overrides};
use tokio_util::sync::CancellationToken;

/// Damselfly supernode: caches registry blobs once and schedules piece transfers between peers.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Config file (TOML). Flags override its keys.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Config helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Write a new digest signing key (PKCS#8, mode 0600) to PATH and print its public key,
    /// for every supernode of a fleet to load as `cluster.signing_key_file` (e.g. from a
    /// Kubernetes Secret). An existing file is never overwritten.
    Keygen {
        /// Where to write the key.
        path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the default config file.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Config {
        what: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", Config::default_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Keygen { path }) = &cli.command {
        return keygen(path);
    }
    let mut config: Config = match damselfly_common::config::load_or_default(cli.config.as_deref())
    {
        Ok(c) => c,
        Err(errs) => return config_failed(&errs),
    };
    cli.overrides.apply(&mut config);
    if let Err(errs) = config.validate() {
        return config_failed(&errs);
    }
    damselfly_common::telemetry::init("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("supernode: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("supernode: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_failed(errs: &[damselfly_common::config::ConfigError]) -> ExitCode {
    damselfly_common::config::print_errors(errs);
    ExitCode::from(damselfly_common::config::EXIT_CONFIG)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let app = App::build(config).await?;
    tracing::info!(api = %app.addr(), data_dir = %data_dir.display(), "supernode listening");
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = damselfly_common::shutdown::signal().await {
            tracing::error!(error = %e, "cannot watch for signals");
        }
        signal.cancel();
    });
    app.run(shutdown).await
}

/// `supernode keygen PATH`.
fn keygen(path: &std::path::Path) -> ExitCode {
    if path.exists() {
        eprintln!("{} exists; not overwritten", path.display());
        return ExitCode::FAILURE;
    }
    match damselfly_common::vouch::DigestSigner::load_or_create(path) {
        Ok(key) => {
            println!(
                "wrote {}; public key {}",
                path.display(),
                hex::encode(key.public_key())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write the signing key: {e}");
            ExitCode::FAILURE
        }
    }
}
