//! `baton bench ...`: measurements. They print figures and never assert timings.

use std::time::{Duration, Instant};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use super::output::Table;
use super::{CliError, Ctx, Exit};
use crate::bench::{leader_kill, percentile};
use crate::client::{Client, Consistency};

/// `baton bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// GetPrimary requests/s and latency percentiles at each concurrency level, against
    /// the cluster at --endpoints.
    GetPrimary(GetPrimaryArgs),
    /// Start a private three-process cluster, kill -9 its leader repeatedly and measure the
    /// time to a new leader and to the first linearizable read.
    LeaderKill(LeaderKillArgs),
    /// Switch a service back and forth between two regions (with an agent of each in this
    /// process) and measure each planned switchover: the call, and the write gap from the
    /// old holder stopping to the new one holding.
    Switchover(SwitchoverArgs),
}

/// `baton bench switchover`.
#[derive(Debug, Args)]
pub struct SwitchoverArgs {
    /// The service to move (both regions must be among its candidates).
    #[arg(long, default_value = "payments")]
    pub service: String,
    /// The two regions to move it between.
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 2,
        default_value = "us-east,eu-west"
    )]
    pub regions: Vec<String>,
    /// How many switchovers.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rounds: u64,
}

/// Read consistency of a benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    /// Confirmed with a quorum by the leader (read index).
    Linearizable,
    /// Served by any node from its applied state.
    Local,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::Linearizable => Consistency::Linearizable,
            ConsistencyArg::Local => Consistency::Local,
        }
    }
}

/// `baton bench get-primary`.
#[derive(Debug, Args)]
pub struct GetPrimaryArgs {
    /// The service to read.
    #[arg(long, default_value = "payments")]
    pub service: String,
    /// Read consistency.
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    pub consistency: ConsistencyArg,
    /// Concurrency levels (requests in flight), run one after the other.
    #[arg(long, value_delimiter = ',', default_value = "1,64",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Vec<u32>,
    /// How long each level runs.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
}

/// `baton bench leader-kill`.
#[derive(Debug, Args)]
pub struct LeaderKillArgs {
    /// Port of the first node of the private cluster; the others use the next two, and
    /// their Raft peer listeners base+20..base+22.
    #[arg(long, default_value_t = 7201, value_parser = clap::value_parser!(u16).range(1..=65513))]
    pub base_port: u16,
    /// How many times to kill the leader.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rounds: u64,
}

/// The figures of one concurrency level.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelResult {
    /// Requests in flight.
    pub concurrency: u32,
    /// Successful requests.
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// How long the level ran.
    pub elapsed: Duration,
    /// Latencies of successful requests, sorted.
    pub latencies: Vec<Duration>,
}

fn ms(d: Duration) -> Value {
    // Three decimals: microsecond resolution is what loopback latencies need.
    Value::from((d.as_secs_f64() * 1e6).round() / 1e3)
}

/// The results as a table (latencies in milliseconds).
pub fn results_table(consistency: &str, results: &[LevelResult]) -> Table {
    let mut t = Table::new(&[
        "consistency",
        "concurrency",
        "requests",
        "errors",
        "requests_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
    ]);
    for r in results {
        let secs = r.elapsed.as_secs_f64();
        let rps = if secs > 0.0 {
            (r.requests as f64 / secs).round() as u64
        } else {
            0
        };
        t.push(vec![
            Value::from(consistency),
            Value::from(r.concurrency),
            Value::from(r.requests),
            Value::from(r.errors),
            Value::from(rps),
            ms(percentile(&r.latencies, 50.0)),
            ms(percentile(&r.latencies, 90.0)),
            ms(percentile(&r.latencies, 99.0)),
            ms(r.latencies.last().copied().unwrap_or_default()),
        ]);
    }
    t
}

/// Runs `concurrency` workers calling GetPrimary until `duration` has passed.
pub async fn run_level(
    client: &Client,
    service: &str,
    consistency: Consistency,
    concurrency: u32,
    duration: Duration,
) -> LevelResult {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            // Each worker its own client handle; they share the channels.
            let client = client.clone();
            let service = service.to_string();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match client.primary(&service, consistency).await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in futures::future::join_all(workers).await {
        match w {
            Ok((l, e)) => {
                latencies.extend(l);
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    LevelResult {
        concurrency,
        requests: latencies.len() as u64,
        errors,
        elapsed,
        latencies,
    }
}

/// `baton bench ...`.
pub async fn run(ctx: &mut Ctx<'_>, cmd: BenchCommand) -> Result<Exit, CliError> {
    match cmd {
        BenchCommand::GetPrimary(a) => get_primary(ctx, a).await,
        BenchCommand::LeaderKill(a) => kill(ctx, a).await,
        BenchCommand::Switchover(a) => switchover(ctx, a).await,
    }
}

async fn get_primary(ctx: &mut Ctx<'_>, args: GetPrimaryArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let consistency = Consistency::from(args.consistency);
    // One request first: it connects, finds the leader, and fails fast on a bad service.
    client.primary(&args.service, consistency).await?;
    let mut results = Vec::new();
    for &c in &args.concurrency {
        results.push(run_level(&client, &args.service, consistency, c, args.duration).await);
    }
    let name = match args.consistency {
        ConsistencyArg::Linearizable => "linearizable",
        ConsistencyArg::Local => "local",
    };
    ctx.print(&results_table(name, &results))?;
    Ok(Exit::Ok)
}

async fn switchover(ctx: &mut Ctx<'_>, args: SwitchoverArgs) -> Result<Exit, CliError> {
    let client = ctx.client()?;
    let (a, b) = match args.regions.as_slice() {
        [a, b] if a != b => (a.clone(), b.clone()),
        _ => {
            return Err(CliError::Other(
                "--regions takes two different regions, e.g. us-east,eu-west".into(),
            ))
        }
    };
    let rounds = crate::bench::switchover(&client, &args.service, &a, &b, args.rounds as usize)
        .await
        .map_err(CliError::Other)?;
    let pairs: Vec<(Duration, Duration)> = rounds.iter().map(|r| (r.call, r.gap)).collect();
    print_rounds(ctx, ["call_ms", "gap_ms"], ["call", "write gap"], &pairs)
}

async fn kill(ctx: &mut Ctx<'_>, args: LeaderKillArgs) -> Result<Exit, CliError> {
    let exe = std::env::current_exe().map_err(|source| CliError::Io {
        context: "cannot find the baton executable to start the cluster".into(),
        source,
    })?;
    let rounds = leader_kill(&exe, args.base_port, args.rounds as usize)
        .await
        .map_err(CliError::Other)?;
    let pairs: Vec<(Duration, Duration)> = rounds
        .iter()
        .map(|r| (r.new_leader, r.first_read))
        .collect();
    print_rounds(
        ctx,
        ["new_leader_ms", "first_read_ms"],
        ["new leader", "first read"],
        &pairs,
    )
}

/// Prints one row per round of two measures, then their p50 and max.
fn print_rounds(
    ctx: &mut Ctx<'_>,
    columns: [&'static str; 2],
    names: [&'static str; 2],
    rounds: &[(Duration, Duration)],
) -> Result<Exit, CliError> {
    let mut per_round = Table::new(&["round", columns[0], columns[1]]);
    for (i, (a, b)) in rounds.iter().enumerate() {
        per_round.push(vec![Value::from(i + 1), ms(*a), ms(*b)]);
    }
    let mut first: Vec<Duration> = rounds.iter().map(|r| r.0).collect();
    let mut second: Vec<Duration> = rounds.iter().map(|r| r.1).collect();
    first.sort_unstable();
    second.sort_unstable();
    let mut summary = Table::new(&["measure", "p50_ms", "max_ms"]);
    for (name, v) in [(names[0], &first), (names[1], &second)] {
        summary.push(vec![
            Value::from(name),
            ms(percentile(v, 50.0)),
            ms(v.last().copied().unwrap_or_default()),
        ]);
    }
    ctx.print_sections(&[("rounds", &per_round), ("summary", &summary)])?;
    Ok(Exit::Ok)
}
