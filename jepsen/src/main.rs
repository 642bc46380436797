//! `baton-jepsen`: run a fault-injection test against a local baton cluster, or re-check a
//! recorded run.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::builder::TypedValueParser as _;
use clap::{Parser, Subcommand};

use baton_jepsen::checkers::CheckConfig;
use baton_jepsen::nemesis::{generate, Family, ScheduleConfig};
use baton_jepsen::report::check_run;

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
    Ok(ScheduleConfig::new(
        nodes,
        families,
        Duration::from_secs(time_limit),
    ))
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
        } => {
            let seed = seed.unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0)
            });
            // First thing printed, so a failing run can always be replayed.
            println!("seed: {seed}");
            let cfg = match schedule_config(&nemesis, nodes, time_limit) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let schedule = generate(seed, &cfg);
            println!(
                "schedule: {} faults over {} s ({nemesis}, {nodes} nodes); output under {}",
                schedule.steps.len(),
                time_limit,
                out.display()
            );
            eprintln!(
                "error: cluster runner not built yet: `test` needs phase 2 (cluster.rs and \
                 workload.rs); `baton-jepsen schedule --seed {seed}` shows the schedule and \
                 `baton-jepsen check <run-dir>` checks a recorded history"
            );
            ExitCode::from(2)
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
                    for v in &r.checkers {
                        let word = match (&v.skipped, v.valid) {
                            (Some(_), _) => "skipped",
                            (None, true) => "valid",
                            (None, false) => "INVALID",
                        };
                        println!(
                            "{:<18} {:<8} checked {:>8}  anomalies {}",
                            v.name,
                            word,
                            v.checked_ops,
                            v.anomalies.len()
                        );
                    }
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
