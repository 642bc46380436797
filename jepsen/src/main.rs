//! `baton-jepsen`: run a fault-injection test against a local baton cluster, or re-check a
//! recorded run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

use baton_jepsen::checkers::{CheckConfig, Verdict};
use baton_jepsen::cluster::Timing;
use baton_jepsen::nemesis::{generate, Family, ScheduleConfig};
use baton_jepsen::report::check_run;
use baton_jepsen::runner::{run, TestConfig};

/// Fault-injection harness for baton.
#[derive(Parser)]
#[command(name = "baton-jepsen", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a cluster under faults, record a history and check it.
    Test {
        /// Fault family (partition, kill, pause, clock, disk), a comma-separated list,
        /// `all` or `none`.
        #[arg(long, default_value = "all")]
        nemesis: String,
        /// Length of the fault phase, seconds.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Seed of the schedule and workload (random when omitted; always printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Number of coordinator nodes.
        #[arg(long, default_value_t = 3, value_parser = clap::builder::PossibleValuesParser::new(["3", "5"]).map(|s| s.parse::<u32>().unwrap_or(3)))]
        nodes: u32,
        /// Where run folders are created.
        #[arg(long, default_value = "jepsen/runs")]
        out: PathBuf,
        /// The `baton` binary (default: `baton` next to this executable).
        #[arg(long)]
        baton: Option<PathBuf>,
        /// Liveness bound: after the last fault heals, reads, failovers and watchers must
        /// recover within this many seconds (the workload runs that long after the heal).
        #[arg(long, default_value_t = 15)]
        liveness_bound: u64,
        /// Services allow automatic failover (hidden grants are then legal for the checkers).
        #[arg(long)]
        automation: bool,
        /// Agents let the client library acknowledge revocations itself
        /// (`auto_ack_demotion`) instead of recording `demoted` first and then acknowledging.
        #[arg(long)]
        auto_ack: bool,
    },
    /// Re-run every checker on a recorded run folder and rewrite its report.
    Check {
        /// The run folder (holding history.jsonl).
        run_dir: PathBuf,
        /// Override the recorded liveness bound, milliseconds.
        #[arg(long)]
        liveness_bound_ms: Option<u64>,
        /// Treat the run as having automatic failover on (hidden grants are legal).
        #[arg(long)]
        automation: bool,
    },
    /// Print the fault schedule a seed gives, as JSON (to inspect or replay a run).
    Schedule {
        /// Fault families, as for `test`.
        #[arg(long, default_value = "all")]
        nemesis: String,
        /// Length of the fault phase, seconds.
        #[arg(long, default_value_t = 60)]
        time_limit: u64,
        /// Seed.
        #[arg(long)]
        seed: u64,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
    },
}

fn schedule_config(nemesis: &str, nodes: u32, time_limit: u64) -> Result<ScheduleConfig, String> {
    let families = Family::parse_list(nemesis)?;
    let mut cfg = ScheduleConfig::new(nodes, families, Duration::from_secs(time_limit));
    // The same lease TTL as `test` uses, so `schedule` shows exactly a run's schedule.
    cfg.lease_ttl = Timing::wan().lease_ttl;
    Ok(cfg)
}

/// The `baton` binary next to this executable (both are built into the same target dir).
fn default_baton() -> std::io::Result<PathBuf> {
    Ok(std::env::current_exe()?.with_file_name("baton"))
}

/// One line per checker: name, verdict, operations checked, anomalies.
fn print_table(verdicts: &[Verdict]) {
    println!(
        "{:<18} {:<8} {:>12} {:>10}",
        "checker", "valid", "ops checked", "anomalies"
    );
    for v in verdicts {
        let word = match (&v.skipped, v.valid) {
            (Some(_), _) => "skipped",
            (None, true) => "valid",
            (None, false) => "INVALID",
        };
        println!(
            "{:<18} {:<8} {:>12} {:>10}",
            v.name,
            word,
            v.checked_ops,
            v.anomalies.len()
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Test {
            nemesis,
            time_limit,
            seed,
            nodes,
            out,
            baton,
            liveness_bound,
            automation,
            auto_ack,
        } => {
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            // First thing printed, so a failing run can always be replayed.
            println!("seed: {seed}");
            let families = match Family::parse_list(&nemesis) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let baton = match baton.map(Ok).unwrap_or_else(default_baton) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: cannot locate the baton binary: {e}; pass --baton PATH");
                    return ExitCode::from(2);
                }
            };
            let cfg = TestConfig {
                nemesis: nemesis.clone(),
                families,
                time_limit: Duration::from_secs(time_limit),
                seed,
                nodes,
                out,
                baton,
                automation,
                liveness_bound: Duration::from_secs(liveness_bound),
                auto_ack,
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: tokio runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            let started = std::time::Instant::now();
            let outcome = rt.block_on(run(cfg));
            // Stop proxies and client tasks without waiting for them.
            rt.shutdown_timeout(Duration::from_secs(1));
            match outcome {
                Ok(o) => {
                    print_table(&o.results.checkers);
                    let s = &o.results.summary;
                    println!(
                        "seed {seed}, nemesis {nemesis}, {nodes} nodes: {} operations ({} ok, {} fail, {} unknown), {} faults ({} skipped), {:.0} s",
                        s.operations, s.ok, s.fail, s.info, s.faults, s.faults_skipped,
                        started.elapsed().as_secs_f64()
                    );
                    if o.node_crashes > 0 {
                        println!(
                            "warning: {} node process(es) exited by themselves; see {}",
                            o.node_crashes,
                            o.dir.join("harness.log").display()
                        );
                    }
                    println!(
                        "{}: {} (report: {})",
                        o.dir.display(),
                        if o.results.valid { "VALID" } else { "INVALID" },
                        o.dir.join("index.html").display()
                    );
                    if o.interrupted {
                        ExitCode::from(130)
                    } else if o.results.valid {
                        ExitCode::SUCCESS
                    } else {
                        println!(
                            "replay: baton-jepsen test --nemesis {nemesis} --time-limit {time_limit} --seed {seed} --nodes {nodes}"
                        );
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: the run could not be carried out: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Check {
            run_dir,
            liveness_bound_ms,
            automation,
        } => {
            let overrides = (liveness_bound_ms.is_some() || automation).then(|| {
                let h = baton_jepsen::history::History::read(&run_dir.join("history.jsonl"));
                let mut c = h.map(|h| CheckConfig::from_history(&h)).unwrap_or_default();
                if let Some(b) = liveness_bound_ms {
                    c.liveness_bound_ms = b;
                }
                c.automation |= automation;
                c
            });
            match check_run(&run_dir, overrides) {
                Ok(r) => {
                    print_table(&r.checkers);
                    println!(
                        "{}: {} (report: {})",
                        run_dir.display(),
                        if r.valid { "VALID" } else { "INVALID" },
                        run_dir.join("index.html").display()
                    );
                    if r.valid {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: cannot check {}: {e}", run_dir.display());
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Schedule {
            nemesis,
            time_limit,
            seed,
            nodes,
        } => match schedule_config(&nemesis, nodes, time_limit) {
            Ok(cfg) => {
                let s = generate(seed, &cfg);
                let json = serde_json::to_string_pretty(&s).unwrap_or_else(|e| e.to_string());
                // Ignore a closed pipe (`| head`): the schedule was for a reader who left.
                let _ = writeln!(std::io::stdout(), "{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
