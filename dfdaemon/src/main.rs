//! `dfdaemon`: the per-node registry mirror. See the library docs.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use dfdaemon::{App, Config, config::Overrides, init};
use tokio_util::sync::CancellationToken;

/// Damselfly dfdaemon: a registry mirror for containerd, Docker and Podman that fetches
/// blobs through the peer-to-peer swarm.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Config file (TOML). Flags override its keys.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
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
    /// Print (or write) a container runtime's configuration for pulling through this mirror.
    Init {
        /// The runtime.
        runtime: Runtime,
        /// Write the files instead of printing them.
        #[arg(long)]
        write: bool,
        /// Mirror URL the runtime uses. Default: from `listen` (a wildcard becomes 127.0.0.1).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// containerd's hosts directory (`config_path`).
        #[arg(long, value_name = "DIR", default_value = "/etc/containerd/certs.d")]
        hosts_dir: PathBuf,
        /// Docker's daemon.json.
        #[arg(long, value_name = "FILE", default_value = "/etc/docker/daemon.json")]
        docker_config: PathBuf,
        /// Configure only these registries (repeatable), `_default` being containerd's
        /// catch-all. Default: `_default` (containerd), `docker.io` and every configured
        /// registry. Not for Docker, which mirrors Docker Hub only.
        #[arg(long = "registry", value_name = "HOST")]
        registries: Vec<String>,
        /// Podman's registries.conf drop-in.
        #[arg(
            long,
            value_name = "FILE",
            default_value = "/etc/containers/registries.conf.d/50-damselfly.conf"
        )]
        podman_config: PathBuf,
    },
    /// Tell what this node knows of a blob: cached or downloading, and where its bytes came
    /// from (peers, supernode, registry), with the reason if the registry was used.
    Explain {
        /// The blob digest (`sha256:<hex>`, or the bare hex).
        digest: String,
        /// The mirror to ask. Default: from `listen` (a wildcard becomes 127.0.0.1).
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the default config file.
    Default,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum Runtime {
    Containerd,
    Docker,
    Podman,
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
    let mut config: Config = match damselfly_common::config::load_or_default(cli.config.as_deref())
    {
        Ok(c) => c,
        Err(errs) => return config_failed(&errs),
    };
    cli.overrides.apply(&mut config);
    if let Err(errs) = config.validate() {
        return config_failed(&errs);
    }
    if let Some(Command::Init {
        runtime,
        write,
        mirror,
        hosts_dir,
        docker_config,
        podman_config,
        registries,
    }) = cli.command
    {
        let mirror = mirror.unwrap_or_else(|| init::mirror_url(&config));
        let checked = match runtime {
            Runtime::Containerd => init::check_selection(&registries, true),
            Runtime::Podman => init::check_selection(&registries, false),
            Runtime::Docker if registries.is_empty() => Ok(()),
            Runtime::Docker => Err("--registry: Docker mirrors Docker Hub only".to_owned()),
        };
        if let Err(e) = checked {
            eprintln!("dfdaemon init: {e}");
            return ExitCode::from(damselfly_common::config::EXIT_CONFIG);
        }
        let files = match runtime {
            Runtime::Containerd => init::containerd(&config, &mirror, &hosts_dir, &registries),
            Runtime::Docker => {
                let existing = std::fs::read_to_string(&docker_config).ok();
                match init::docker(&mirror, existing.as_deref(), &docker_config) {
                    Ok(f) => vec![f],
                    Err(e) => {
                        eprintln!("dfdaemon init: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            Runtime::Podman => match init::podman(&config, &mirror, &podman_config, &registries) {
                Ok(f) => vec![f],
                Err(e) => {
                    eprintln!("dfdaemon init: {e}");
                    return ExitCode::from(damselfly_common::config::EXIT_CONFIG);
                }
            },
        };
        return emit(&files, write);
    }
    if let Some(Command::Explain {
        digest,
        mirror,
        json,
    }) = cli.command
    {
        let mirror = mirror.unwrap_or_else(|| init::mirror_url(&config));
        return explain(&mirror, &digest, json);
    }
    damselfly_common::telemetry::init("info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dfdaemon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfdaemon: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dfdaemon explain`: asks the mirror's blob API and prints its answer.
fn explain(mirror: &str, digest: &str, json: bool) -> ExitCode {
    let digest = if digest.contains(':') {
        digest.to_owned()
    } else {
        format!("sha256:{digest}")
    };
    let url = format!("{}/api/v1/blobs/{digest}", mirror.trim_end_matches('/'));
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                let resp = reqwest::Client::new()
                    .get(&url)
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "cannot reach the mirror at {mirror} ({}); is dfdaemon running there? (--mirror)",
                            damselfly_oci::error_chain(&e)
                        )
                    })?;
                let status = resp.status();
                let body = resp.text().await?;
                if !status.is_success() {
                    let msg = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or(body);
                    anyhow::bail!("the mirror answered {status}: {msg}");
                }
                Ok(body)
            })
        });
    let body = match asked {
        Ok(b) => b,
        Err(e) => {
            eprintln!("dfdaemon explain: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{body}");
        return ExitCode::SUCCESS;
    }
    match serde_json::from_str::<dfdaemon::provenance::Explanation>(&body) {
        Ok(e) => {
            print!("{}", e.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dfdaemon explain: the mirror's answer is not understood: {e}");
            ExitCode::FAILURE
        }
    }
}

fn emit(files: &[init::ConfigFile], write: bool) -> ExitCode {
    for f in files {
        if !write {
            println!("# {}\n{}", f.path.display(), f.contents);
            continue;
        }
        if let Err(e) = damselfly_common::disk::write_replacing(&f.path, f.contents.as_bytes()) {
            eprintln!("dfdaemon init: writing {}: {e}", f.path.display());
            return ExitCode::FAILURE;
        }
        println!("wrote {}", f.path.display());
    }
    ExitCode::SUCCESS
}

fn config_failed(errs: &[damselfly_common::config::ConfigError]) -> ExitCode {
    damselfly_common::config::print_errors(errs);
    ExitCode::from(damselfly_common::config::EXIT_CONFIG)
}

async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let supernodes = config.supernodes.join(",");
    let app = App::build(config).await?;
    tracing::info!(
        mirror = %app.addr(),
        peer = %app.peer_addr(),
        supernodes = %supernodes,
        data_dir = %data_dir.display(),
        "dfdaemon listening"
    );
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
