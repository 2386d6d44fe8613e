//! `swarm-sim`: simulate a swarm distributing one blob and print its distribution time over
//! the Kumar–Ross bound. `swarm-sim --peers 10000` runs the flash crowd.

use anyhow::{Context, bail};
use bytesize::ByteSize;
use clap::Parser;
use damselfly_benches::swarm_sim;
use damselfly_swarm::sim::Scenario;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Number of peers (the supernode is extra).
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Blob size.
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Scenario: flash, staggered, churn, hetero, liar, or all.
    #[arg(long, default_value = "flash")]
    scenario: String,
    /// Piece size (default: the daemons' choice for the blob size).
    #[arg(long)]
    piece_size: Option<ByteSize>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
    /// What-if: parents per peer (scheduler's `parents_per_peer`).
    #[arg(long)]
    parents: Option<usize>,
    /// What-if: requests in flight per peer (picker's `max_in_flight`).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// What-if: requests in flight per parent (picker's `per_parent_in_flight`).
    #[arg(long)]
    per_parent: Option<usize>,
    /// What-if: unreported supernode offers (scheduler's `seed_offers`).
    #[arg(long)]
    seed_offers: Option<u32>,
    /// What-if: upload slots per peer.
    #[arg(long)]
    upload_slots: Option<u32>,
    /// What-if: how long a Busy parent is skipped, in milliseconds.
    #[arg(long)]
    busy_backoff_ms: Option<u64>,
    /// What-if: peers' sync period in milliseconds (a quarter of it after a new piece).
    #[arg(long)]
    sync_ms: Option<u64>,
    /// Charge every sync, request and answer header its wire size on the links it crosses
    /// (the supernode's uplink included). About half again as many events.
    #[arg(long)]
    control_traffic: bool,
    /// What-if: parents do not announce their pieces; the supernode's sync answers carry
    /// every parent's bitmap (dfget's QUIC transport, or `--no-announcements`).
    #[arg(long)]
    no_announcements: bool,
    /// Piece digests come in the supernode's sync answers, not with the pieces (signed by
    /// the supernode): dfget against a supernode without a key, or an older one.
    #[arg(long)]
    no_vouched_digests: bool,
    /// What-if: a peer relays a piece while it is still receiving it, withholding the last
    /// 64 KiB until it has verified the piece (issue 12 part 4).
    #[arg(long)]
    cut_through: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenarios: Vec<Scenario> = if cli.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        match Scenario::from_name(&cli.scenario) {
            Some(s) => vec![s],
            None => bail!(
                "unknown scenario {:?}: use flash, staggered, churn, hetero, liar or all",
                cli.scenario
            ),
        }
    };
    if cli.peers == 0 || cli.size.as_u64() == 0 {
        bail!("--peers and --size must be above 0");
    }
    let piece_size = cli
        .piece_size
        .map(|p| u32::try_from(p.as_u64()).context("--piece-size must be below 4 GiB"))
        .transpose()?;
    let mut rows = Vec::new();
    for s in scenarios {
        let row = swarm_sim::run(s, cli.peers, cli.size.as_u64(), |c| {
            c.seed = cli.seed;
            if let Some(p) = piece_size {
                c.piece_size = p.max(1);
            }
            if let Some(v) = cli.parents {
                c.scheduler.parents_per_peer = v;
            }
            if let Some(v) = cli.max_in_flight {
                c.picker.max_in_flight = v;
            }
            if let Some(v) = cli.per_parent {
                c.picker.per_parent_in_flight = v;
            }
            if let Some(v) = cli.seed_offers {
                c.scheduler.seed_offers = v;
            }
            if let Some(v) = cli.upload_slots {
                c.scheduler.upload_slots = v;
            }
            if let Some(v) = cli.busy_backoff_ms {
                c.picker.busy_backoff = std::time::Duration::from_millis(v);
            }
            if let Some(v) = cli.sync_ms {
                c.sync_interval = std::time::Duration::from_millis(v.max(1));
            }
            if cli.control_traffic {
                c.control_traffic = true;
            }
            if cli.no_announcements {
                c.announcements = false;
            }
            if cli.no_vouched_digests {
                c.vouched_digests = false;
            }
            if cli.cut_through {
                c.cut_through = true;
            }
        });
        if !cli.json {
            eprintln!("{}: done in {:.1} s", s.name(), row.wall.as_secs_f64());
        }
        rows.push(row);
    }
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&swarm_sim::json(&rows))?);
    } else {
        print!("{}", swarm_sim::table(&rows));
    }
    Ok(())
}
