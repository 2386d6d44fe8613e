//! `chaos`: rounds of random faults during a multi-peer pull, real processes.
//!
//! Each round (`damselfly_e2e::run_round`) starts a real `docker-registry` holding a fresh
//! random blob, three supernodes and `--peers` dfget peers pulling it at once, each held to
//! `--rate`, back-to-source off; `--fault-after` in, one fault chosen at random (seeded)
//! strikes: the blob's home supernode SIGKILLed, or SIGKILLed and restarted, a peer
//! SIGKILLed or frozen for 5 s, a peer serving corrupt bytes, or nothing. The figures: pulls
//! completed of those expected, outputs holding wrong bytes (must be 0), registry bytes over
//! the blob's size, and the time to the last completion over `T = size / rate`.
//!
//! The processes are the release builds next to this benchmark:
//!
//! ```text
//! cargo build --profile bench -p supernode -p dfget --bins
//! cargo bench -p damselfly-benches --bench chaos -- --rounds 12 --peers 8 --size 64MiB --rate 8MiB
//! ```

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;
use common::percentile;
use damselfly_e2e::{ChaosFault, ChaosRound, run_round};

/// Random faults during multi-peer pulls.
#[derive(Parser, Debug)]
struct Args {
    /// Rounds (one fault each).
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Downloading peers per round.
    #[arg(long, default_value_t = 8)]
    peers: usize,
    /// Blob size.
    #[arg(long, default_value = "64MiB")]
    size: ByteSize,
    /// Each peer's download limit per second.
    #[arg(long, default_value = "8MiB")]
    rate: ByteSize,
    /// When the fault strikes, from the peers' start.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    fault_after: Duration,
    /// Seed of the fault sequence and the blobs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only this fault (repeatable: the rounds take the named faults in turn) instead of a
    /// random one per round, e.g. `--fault kill-home` to measure one fault at a given size.
    #[arg(long = "fault", value_parser = parse_fault)]
    faults: Vec<ChaosFault>,
    /// An extra flag for every supernode (repeatable), e.g.
    /// `--supernode-arg=--cdn-takeover-from-peers=false` for the baseline of a takeover.
    #[arg(long = "supernode-arg", allow_hyphen_values = true)]
    supernode_args: Vec<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_fault(s: &str) -> Result<ChaosFault, String> {
    ChaosFault::ALL
        .into_iter()
        .find(|f| f.name() == s)
        .ok_or_else(|| {
            let names: Vec<_> = ChaosFault::ALL.iter().map(|f| f.name()).collect();
            format!("unknown fault {s:?}; one of {}", names.join(", "))
        })
}

/// splitmix64: a reproducible fault sequence without a random-number crate.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!("machine: {}", common::machine());
    let t = args.size.as_u64() as f64 / args.rate.as_u64().max(1) as f64;
    println!(
        "chaos: {} rounds, {} peers, {} blob at {}/s each (T = {t:.1} s), fault after {:?}, seed {}, faults: {}",
        args.rounds,
        args.peers,
        args.size,
        args.rate,
        args.fault_after,
        args.seed,
        if args.faults.is_empty() {
            "random".to_owned()
        } else {
            args.faults
                .iter()
                .map(|f| f.name())
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    let mut state = args.seed;
    let mut outcomes = Vec::with_capacity(args.rounds);
    println!("\n| round | fault | pulls | wrong outputs | registry / blob | last pull / T |");
    println!("|---:|---|---:|---:|---:|---:|");
    for round in 0..args.rounds {
        let fault = if args.faults.is_empty() {
            ChaosFault::ALL[(next(&mut state) % ChaosFault::ALL.len() as u64) as usize]
        } else {
            args.faults[round % args.faults.len()]
        };
        let shape = ChaosRound {
            peers: args.peers,
            size: args.size.as_u64() as usize,
            rate: args.rate.as_u64(),
            fault_after: args.fault_after,
            seed: args.seed.wrapping_mul(1000).wrapping_add(round as u64),
            timeout: Duration::from_secs_f64((t * 10.0).max(120.0)),
            supernode_args: args.supernode_args.clone(),
        };
        let out = run_round(fault, &shape)?;
        println!(
            "| {} | {} | {}/{} | {} | {:.2} | {:.2} |",
            round + 1,
            fault.name(),
            out.completed,
            out.expected,
            out.corrupt,
            out.registry_ratio(),
            out.elapsed.as_secs_f64() / t
        );
        for f in &out.failures {
            println!("  failure: {f}");
        }
        outcomes.push(out);
    }
    let expected: usize = outcomes.iter().map(|o| o.expected).sum();
    let completed: usize = outcomes.iter().map(|o| o.completed).sum();
    let corrupt: usize = outcomes.iter().map(|o| o.corrupt).sum();
    let ratios: Vec<f64> = outcomes.iter().map(|o| o.registry_ratio()).collect();
    let times: Vec<f64> = outcomes
        .iter()
        .map(|o| o.elapsed.as_secs_f64() / t)
        .collect();
    println!(
        "\npulls completed {completed}/{expected} ({:.1} %), wrong outputs {corrupt}, \
         registry / blob p50 {:.2} max {:.2}, last pull / T p50 {:.2} max {:.2}",
        100.0 * completed as f64 / expected.max(1) as f64,
        percentile(&ratios, 50.0),
        percentile(&ratios, 100.0),
        percentile(&times, 50.0),
        percentile(&times, 100.0),
    );
    anyhow::ensure!(corrupt == 0, "wrong bytes reached an output");
    anyhow::ensure!(completed == expected, "pulls failed");
    Ok(())
}
