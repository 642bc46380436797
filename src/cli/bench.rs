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
    /// PostgreSQL behind baton (cluster/postgres/pg.sh bench): fail over by killing the
    /// primary's region and switch over, with a fenced writer; time to the first write on
    /// the new primary, the write gap, lost acknowledged writes and overlapping primaries,
    /// beside Patroni's figures.
    Postgres(PostgresArgs),
    /// Watch fan-out, as the etcd peer measures it: --watchers Watch streams of one service
    /// over --conns connections, then --rounds writes --gap apart that each produce one
    /// event; p50/p99/max (each the median over rounds) from a write's send to each
    /// watcher's receipt, and watchers that missed an event.
    Watch(WatchArgs),
    /// Build a single-node data directory with a long history (1,000,000 log entries by
    /// default) and measure restart to the first linearizable read, RSS, and the snapshot's
    /// size, build and install times.
    Restart(crate::bench::restart::RestartArgs),
    /// etcd 3.4 and baton side by side: start a three-member etcd cluster and a three-node
    /// baton cluster on 127.0.0.1, run the same read, KeepAlive and watch shapes on each,
    /// alternating, --runs times, and print medians, ratios, the targets and each
    /// node's memory after the load.
    Compare(CompareArgs),
}

/// `baton bench watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The service to watch (its frozen flag is toggled once per round, and restored).
    #[arg(long, default_value = "payments")]
    pub service: String,
    /// Watch streams.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub watchers: u64,
    /// HTTP/2 connections, round-robin over --endpoints.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub conns: u64,
    /// Writes, each one measured round.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub rounds: u64,
    /// Time between two writes (and before the first).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub gap: Duration,
    /// The serving process (e.g. `baton dev`): its RSS growth per idle watcher is printed.
    #[arg(long, value_name = "PID")]
    pub rss_pid: Option<u32>,
}

/// `baton bench compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The etcd binary (Debian's etcd-server); default: `etcd` on PATH.
    #[arg(long, value_name = "PATH")]
    pub etcd: Option<std::path::PathBuf>,
    /// Runs of each shape on each system (the medians are over these).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub runs: u64,
    /// Only the shapes whose name contains one of these, e.g. `--only read,watch-1k`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// First port of the baton cluster on 127.0.0.1 (it uses about 40 from there).
    #[arg(long, default_value_t = 27100)]
    pub baton_port: u16,
    /// First port of the etcd cluster on 127.0.0.1 (it uses about 20 from there).
    #[arg(long, default_value_t = 27300)]
    pub etcd_port: u16,
    /// Which systems to run: both (the comparison), or one alone (to profile it).
    #[arg(long, value_enum, default_value_t = Systems::Both)]
    pub systems: Systems,
}

/// Which systems `baton bench compare` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Systems {
    Both,
    Baton,
    Etcd,
}

/// `baton bench postgres`.
#[derive(Debug, Args)]
pub struct PostgresArgs {
    /// The service whose primary is PostgreSQL.
    #[arg(long, default_value = "payments")]
    pub service: String,
    /// Each region's PostgreSQL server: REGION=HOST:PORT,... (`pg.sh env` prints it).
    #[arg(long, value_name = "REGION=HOST:PORT,...")]
    pub pg: String,
    /// The launcher, called as `CONTROL kill-region R` and `CONTROL revive-region R`.
    #[arg(long, value_name = "PATH")]
    pub control: std::path::PathBuf,
    /// Failover rounds, then as many switchover rounds.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub rounds: u64,
    /// Time between two writes of the writer.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10ms")]
    pub interval: Duration,
    /// Log every acknowledged write here (JSON lines).
    #[arg(long, value_name = "PATH")]
    pub writer_log: Option<std::path::PathBuf>,
    /// Patroni's results/summary.txt (measure.py summary), printed side by side.
    #[arg(long, value_name = "PATH")]
    pub patroni_summary: Option<std::path::PathBuf>,
    /// Where Patroni's figures come from, for the side-by-side table.
    #[arg(long, default_value = "recorded")]
    pub patroni_label: String,
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
        BenchCommand::Postgres(a) => postgres(ctx, a).await,
        BenchCommand::Watch(a) => watch(ctx, a).await,
        BenchCommand::Restart(a) => restart(ctx, a).await,
        BenchCommand::Compare(a) => compare(ctx, a).await,
    }
}

async fn compare(ctx: &mut Ctx<'_>, args: CompareArgs) -> Result<Exit, CliError> {
    use crate::bench::compare::{self as cmp, CompareOptions, Figure};
    use crate::bench::shape::Measured;
    let exe = std::env::current_exe().map_err(|source| CliError::Io {
        context: "cannot find the baton executable to start the cluster".into(),
        source,
    })?;
    let with_etcd = args.systems != Systems::Baton;
    let opts = CompareOptions {
        etcd: match with_etcd {
            true => crate::bench::etcd::find_etcd(args.etcd.as_deref()).map_err(CliError::Other)?,
            false => Default::default(),
        },
        with_etcd,
        with_baton: args.systems != Systems::Etcd,
        runs: args.runs as usize,
        only: args.only,
        baton_port: args.baton_port,
        etcd_port: args.etcd_port,
    };
    let report = cmp::compare(&exe, &opts, |line| eprintln!("{line}"))
        .await
        .map_err(CliError::Other)?;
    // One cell: the median, and the spread over the runs.
    let cell = |row: &cmp::Row, of_baton: bool| {
        let f = Figure::of(&row.shape);
        let runs: &[Measured] = if of_baton { &row.baton } else { &row.etcd };
        let mut v: Vec<f64> = runs.iter().map(|m| f.value(m)).collect();
        v.sort_by(f64::total_cmp);
        let (lo, hi) = (
            v.first().copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0),
        );
        let failed: u64 = runs.iter().map(|m| m.failed).sum();
        let errors: u64 = runs.iter().map(|m| m.errors).sum();
        let mut text = match f {
            Figure::Rate => format!("{:.0}/s [{lo:.0}–{hi:.0}]", row.median(of_baton)),
            Figure::P99 => format!("p99 {:.1} ms [{lo:.1}–{hi:.1}]", row.median(of_baton)),
        };
        if failed > 0 {
            text.push_str(&format!(", {failed} failed"));
        }
        if errors > 0 {
            text.push_str(&format!(", {errors} errors"));
        }
        Value::from(text)
    };
    let mut table = Table::new(&["shape", "etcd", "baton", "baton_vs_etcd", "target", "met"]);
    for row in &report.rows {
        let (target, met) = row.target();
        table.push(vec![
            Value::from(row.name),
            cell(row, false),
            cell(row, true),
            Value::from(format!("{:.2}×", row.advantage())),
            Value::from(target),
            Value::from(if met { "yes" } else { "NO" }),
        ]);
    }
    let mb = |v: &[u64]| {
        v.iter()
            .map(|b| format!("{:.0}", *b as f64 / 1_048_576.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (etcd_max, baton_max) = (
        report.memory.etcd.iter().copied().max().unwrap_or(0),
        report.memory.baton.iter().copied().max().unwrap_or(0),
    );
    table.push(vec![
        Value::from("RSS per node after the load (MB)"),
        Value::from(mb(&report.memory.etcd)),
        Value::from(mb(&report.memory.baton)),
        Value::from(format!(
            "{:.2}×",
            etcd_max as f64 / (baton_max.max(1)) as f64
        )),
        Value::from("largest ≤ ⅓ etcd's largest"),
        Value::from(if baton_max * 3 <= etcd_max {
            "yes"
        } else {
            "NO"
        }),
    ]);
    let title = format!(
        "etcd 3.4 vs baton, same machine, medians of {} alternating runs [min–max]",
        report.runs
    );
    ctx.print_sections(&[(title.as_str(), &table)])?;
    Ok(Exit::Ok)
}

/// VmRSS of process `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn watch(ctx: &mut Ctx<'_>, args: WatchArgs) -> Result<Exit, CliError> {
    let before = args.rss_pid.and_then(rss_kib);
    let mut idle = None;
    let m = crate::bench::watch_load::run_observed(
        &ctx.global.endpoints,
        &args.service,
        args.watchers as usize,
        args.conns as usize,
        args.rounds as usize,
        args.gap,
        || idle = args.rss_pid.and_then(rss_kib),
    )
    .await
    .map_err(CliError::Other)?;
    let us = |v: u64| Value::from(v as f64 / 1e3);
    let mut t = Table::new(&[
        "watchers",
        "conns",
        "rounds",
        "received",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "failed",
        "write_errors",
        "rss_kib_per_watcher",
    ]);
    let per_watcher = match (before, idle) {
        (Some(b), Some(i)) => {
            Value::from((i.saturating_sub(b) as f64 / args.watchers as f64 * 100.0).round() / 100.0)
        }
        _ => Value::from("-"),
    };
    t.push(vec![
        Value::from(args.watchers),
        Value::from(args.conns),
        Value::from(args.rounds),
        Value::from(m.ops),
        us(m.p50_us),
        us(m.p99_us),
        us(m.max_us),
        Value::from(m.failed),
        Value::from(m.errors),
        per_watcher,
    ]);
    ctx.print(&t)?;
    Ok(if m.failed > 0 {
        Exit::CheckFailed
    } else {
        Exit::Ok
    })
}

async fn restart(
    ctx: &mut Ctx<'_>,
    a: crate::bench::restart::RestartArgs,
) -> Result<Exit, CliError> {
    let exe = std::env::current_exe().map_err(|source| CliError::Io {
        context: "cannot find the baton executable to start the node".into(),
        source,
    })?;
    let r = crate::bench::restart::restart(&exe, &a)
        .await
        .map_err(CliError::Other)?;
    let (columns, row): (Vec<&'static str>, Vec<Value>) =
        crate::bench::restart::fields(&r).into_iter().unzip();
    ctx.print(&Table::record(&columns, row).vertical())?;
    Ok(Exit::Ok)
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

async fn postgres(ctx: &mut Ctx<'_>, args: PostgresArgs) -> Result<Exit, CliError> {
    use crate::postgres::{self as pg, BenchOptions};
    let targets = pg::parse_targets(&args.pg).map_err(|m| CliError::Usage(format!("--pg: {m}")))?;
    // Read Patroni's table first: a wrong path fails before the rounds, not after them.
    let patroni = match &args.patroni_summary {
        Some(p) => Some(pg::parse_patroni_summary(
            &std::fs::read_to_string(p).map_err(|source| CliError::Io {
                context: format!("cannot read Patroni's summary {}", p.display()),
                source,
            })?,
        )),
        None => None,
    };
    let client = ctx.client()?;
    let opts = BenchOptions {
        service: args.service,
        targets,
        control: args.control,
        failovers: args.rounds as usize,
        switchovers: args.rounds as usize,
        interval: args.interval,
        writer_log: args.writer_log,
        settle: Duration::from_secs(120),
    };
    let report = pg::bench(&client, &opts).await.map_err(CliError::Other)?;
    let secs = |d: Duration| Value::from((d.as_secs_f64() * 1e3).round() / 1e3);
    let mut fo = Table::new(&[
        "round",
        "killed",
        "leader_there",
        "new_primary",
        "first_write_s",
    ]);
    for (i, r) in report.failovers.iter().enumerate() {
        fo.push(vec![
            Value::from(i + 1),
            Value::from(r.killed.clone()),
            Value::from(r.leader_killed),
            Value::from(r.new.clone()),
            secs(r.first_write),
        ]);
    }
    let mut so = Table::new(&[
        "round",
        "from",
        "to",
        "call_s",
        "first_write_s",
        "write_gap_s",
    ]);
    for (i, r) in report.switchovers.iter().enumerate() {
        so.push(vec![
            Value::from(i + 1),
            Value::from(r.from.clone()),
            Value::from(r.to.clone()),
            secs(r.call),
            secs(r.first_write),
            secs(r.gap),
        ]);
    }
    let c = &report.checks;
    let replication = if c.synchronous.is_empty() {
        "asynchronous".to_string()
    } else {
        format!("synchronous: {}", c.synchronous)
    };
    let mut checks = Table::new(&["check", "value"]);
    for (k, v) in [
        ("acknowledged writes", c.acked.to_string()),
        ("lost acknowledged writes", c.lost.len().to_string()),
        ("overlapping primaries", c.overlaps.len().to_string()),
        ("promotions in baton_fence", c.fence.len().to_string()),
        ("replication", replication.clone()),
        ("writer", report.writer.clone()),
    ] {
        checks.push(vec![Value::from(k), Value::from(v)]);
    }
    for o in c.overlaps.iter().take(10) {
        checks.push(vec![Value::from("overlap"), Value::from(o.clone())]);
    }
    let fo_times: Vec<Duration> = report.failovers.iter().map(|r| r.first_write).collect();
    let gaps: Vec<Duration> = report.switchovers.iter().map(|r| r.gap).collect();
    let fo_other: Vec<Duration> = report
        .failovers
        .iter()
        .filter(|r| !r.leader_killed)
        .map(|r| r.first_write)
        .collect();
    let fo_leader: Vec<Duration> = report
        .failovers
        .iter()
        .filter(|r| r.leader_killed)
        .map(|r| r.first_write)
        .collect();
    let find = |scenario: &str, label: &str| {
        patroni.as_ref().and_then(|rows| {
            rows.iter()
                .find(|r| r.scenario == scenario && r.label == label)
        })
    };
    let cell = |row: Option<&pg::PatroniRow>, i: usize| {
        Value::from(
            row.and_then(|r| r.columns.get(i).cloned().flatten())
                .unwrap_or_else(|| "-".into()),
        )
    };
    let fastest = find("failover", "aggressive");
    let mut side = Table::new(&[
        "measure (s, median [min-max])",
        "baton",
        "patroni_fastest_20_1_3",
        "patroni_defaults_30_10_10",
        "target",
        "met",
    ]);
    let fo_med = pg::median_secs(&fo_times);
    let gap_med = pg::median_secs(&gaps);
    let fo_target = fastest.and_then(|r| r.median(2)).map(|m| m / 10.0);
    let gap_target = find("switchover", "aggressive")
        .and_then(|r| r.median(4))
        .map(|m| m / 10.0);
    let met =
        |v: f64, t: Option<f64>| Value::from(t.map_or("-", |t| if v <= t { "yes" } else { "NO" }));
    side.push(vec![
        Value::from("failover: region killed -> first write on the new primary"),
        Value::from(pg::spread(&fo_times)),
        cell(fastest, 2),
        cell(find("failover", "defaults"), 2),
        Value::from(fo_target.map_or("-".into(), |t| {
            format!("<= {t:.2} (1/10 of Patroni's fastest)")
        })),
        met(fo_med, fo_target),
    ]);
    side.push(vec![
        Value::from("  of which baton's Raft leader was elsewhere / in the killed region"),
        Value::from(format!(
            "{} / {}",
            pg::spread(&fo_other),
            pg::spread(&fo_leader)
        )),
        Value::from(""),
        Value::from(""),
        Value::from(""),
        Value::from(""),
    ]);
    side.push(vec![
        Value::from("switchover: client's longest write gap"),
        Value::from(pg::spread(&gaps)),
        cell(find("switchover", "aggressive"), 4),
        cell(find("switchover", "defaults"), 4),
        Value::from(gap_target.map_or("-".into(), |t| format!("<= {t:.3} (1/10 of Patroni's)"))),
        met(gap_med, gap_target),
    ]);
    side.push(vec![
        Value::from("acknowledged writes lost"),
        Value::from(format!("{} of {} ({replication})", c.lost.len(), c.acked)),
        Value::from("not measured (asynchronous)"),
        Value::from("not measured (asynchronous)"),
        Value::from("0"),
        Value::from(if c.lost.is_empty() { "yes" } else { "NO" }),
    ]);
    side.push(vec![
        Value::from("writes accepted by two primaries at once"),
        Value::from(c.overlaps.len().to_string()),
        Value::from("not measured"),
        Value::from("not measured"),
        Value::from("0"),
        Value::from(if c.overlaps.is_empty() { "yes" } else { "NO" }),
    ]);
    let side_title = format!("side by side (Patroni: {})", args.patroni_label);
    let mut sections: Vec<(&str, &Table)> = vec![
        ("failover rounds", &fo),
        ("switchover rounds", &so),
        ("checks", &checks),
    ];
    if patroni.is_some() {
        sections.push((side_title.as_str(), &side));
    }
    ctx.print_sections(&sections)?;
    let failed = !c.lost.is_empty() || !c.overlaps.is_empty();
    Ok(if failed { Exit::CheckFailed } else { Exit::Ok })
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
