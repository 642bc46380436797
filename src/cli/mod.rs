//! The `baton` command line: one binary, one subcommand per task, one file per command
//! family. Every client command talks to any node of the cluster through
//! [`crate::client`]; `server` and `dev` run nodes.
//!
//! `main -> run() -> Result<ExitCode>`: errors are printed once, to stderr, with a hint of
//! what to do, and map to the named exit codes of [`Exit`]. A closed stdout (`| head`) is
//! not an error.

mod admin;
mod agent;
mod audit;
mod auth;
mod bench;
pub mod cert;
mod control;
mod drill;
mod exit;
mod failover;
mod moves;
pub mod output;
mod plan;
mod read;
mod server;
mod service;
mod services;
mod snapshot;
mod status;
mod watch;
mod workflow;

use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::client::{normalize_endpoint, Client, ClientOptions, ClientTls};

pub use exit::{exit_for_code, CliError, Exit};
pub use output::{OutputFormat, Table};

/// Endpoints of the local dev cluster (`baton dev`), the default of `--endpoints`.
pub const DEV_ENDPOINTS: &str = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103";

/// Default deadline of a request, retries included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// baton — failover coordinator: which region is primary for each service, with which
/// fencing token.
#[derive(Debug, Parser)]
#[command(
    name = "baton",
    version,
    propagate_version = true,
    after_help = "Try it locally: `baton dev` in one terminal, then `baton status`, \
                  `baton primary payments`, `baton watch` and \
                  `baton failover payments --to eu-west --reason test` in another."
)]
pub struct Cli {
    /// Options every command accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after the subcommand.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Cluster nodes to talk to, comma-separated `host:port` (any node will do: the leader
    /// is found and followed).
    #[arg(
        long,
        global = true,
        env = "BATON_ENDPOINTS",
        value_delimiter = ',',
        default_value = DEV_ENDPOINTS,
        value_parser = endpoint_arg,
        value_name = "HOST:PORT,..."
    )]
    pub endpoints: Vec<String>,

    /// TLS: the CA (PEM) that signed the nodes' certificates. Turns TLS on for every
    /// endpoint (`https://host:port` endpoints need it).
    #[arg(long, global = true, env = "BATON_CACERT", value_name = "PEM")]
    pub cacert: Option<PathBuf>,

    /// TLS: this client's certificate (PEM), for nodes that ask for one; with --key.
    #[arg(long, global = true, env = "BATON_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,

    /// TLS: the private key (PEM) of --cert.
    #[arg(long, global = true, env = "BATON_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,

    /// Output format.
    #[arg(
        short = 'w',
        long = "output",
        visible_alias = "write-out",
        global = true,
        value_enum,
        default_value_t = OutputFormat::Table
    )]
    pub output: OutputFormat,

    /// Deadline of each request, retries included (`500ms`, `5s`) [default: 5s; 60s for
    /// `failover`, `failback`, `drill`, `approve` and `reject`, which may wait out a lease
    /// TTL].
    #[arg(long, global = true, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,

    /// On whose behalf you act: a note in the audit trail next to the authenticated
    /// principal (never the principal itself) [default: $USER].
    #[arg(long, global = true, env = "BATON_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,

    /// Bearer token sent on every call (clusters with `[auth]` on); `baton auth token`
    /// makes one.
    // Its own id: `validate` has a positional `token` (a fencing token).
    #[arg(
        long = "token",
        id = "bearer_token",
        global = true,
        env = "BATON_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Log as JSON lines (logs go to stderr; the level is set by RUST_LOG).
    #[arg(long, global = true)]
    pub log_json: bool,
}

/// A normalised endpoint; `https://` is kept so the client can check it has TLS flags.
fn endpoint_arg(s: &str) -> Result<String, String> {
    let addr = normalize_endpoint(s).map_err(|e| e.to_string())?;
    Ok(if s.trim().starts_with("https://") {
        format!("https://{addr}")
    } else {
        addr
    })
}

impl GlobalArgs {
    /// The TLS settings of `--cacert`, `--cert` and `--key`; `None` without them.
    pub fn tls(&self) -> Result<Option<ClientTls>, CliError> {
        Ok(ClientTls::from_files(
            self.cacert.as_deref(),
            self.cert.as_deref(),
            self.key.as_deref(),
        )?)
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator node from its configuration file.
    Server(server::ServerArgs),
    /// Run a local three-region cluster (us-east, eu-west, ap-south) to try baton;
    /// insecure, data in a temporary directory.
    Dev(server::DevArgs),
    /// Show every endpoint: id, region, role, term, commit and applied index, leader.
    Status,
    /// Who is primary for a service, and with which fencing token.
    Primary(read::PrimaryArgs),
    /// List the services with their primary.
    Services(read::ServicesArgs),
    /// Print lease changes as they happen, one line per event, until Ctrl-C.
    Watch(watch::WatchArgs),
    /// Move a service's primary to another region (planned switchover), fencing the old
    /// holder first.
    Failover(failover::FailoverArgs),
    /// Move a service's primary back to its preferred region (a failback run), fencing the
    /// old holder first.
    Failback(moves::FailbackArgs),
    /// What automation would do for a service now, and why every candidate region is or is
    /// not eligible.
    Plan(plan::PlanArgs),
    /// Let a run waiting at an approval step go on.
    Approve(control::DecideArgs),
    /// Reject a run waiting at an approval step (the run ends).
    Reject(control::DecideArgs),
    /// Pause automation for a service (maintenance); manual commands still work.
    Freeze(control::ServiceReasonArgs),
    /// Resume automation for a frozen service.
    Unfreeze(control::ServiceReasonArgs),
    /// Acknowledge a flap pause: automation of the service resumes.
    Ack(control::ServiceReasonArgs),
    /// Switch a service's lease between read-write and read-only (graceful degradation).
    SetMode(control::SetModeArgs),
    /// List workflow runs, newest first.
    Workflows(workflow::WorkflowsArgs),
    /// Show one workflow run: its steps and its phase timeline.
    Workflow(workflow::WorkflowArgs),
    /// Rehearse a failover: switch over to a region, check, fail back, check, and print
    /// the timeline of both runs.
    Drill(drill::DrillArgs),
    /// Check whether a fencing token is still the service's current one (exit code 5 when
    /// it is not).
    Validate(read::ValidateArgs),
    /// Read the audit trail, or verify its hash chain (`baton audit verify`).
    Audit(audit::AuditArgs),
    /// Create, show and delete service definitions.
    #[command(subcommand)]
    Service(service::ServiceCommand),
    /// Cluster membership and maintenance.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Back up the cluster's state to a file, and restore a new cluster from one.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Measure a cluster (prints figures; asserts nothing).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Make a development CA with node and client certificates (for `[peer_tls]`).
    Cert(cert::CertArgs),
    /// Credentials for `[auth]`: `baton auth token NAME` prints a new token and its entry.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Hold a region's lease for a service: run hooks on promotion and demotion, and fence
    /// itself when the lease can no longer be proved valid.
    Agent(agent::AgentArgs),
    /// Print a shell completion script: `source <(baton completions bash)`, or save it as
    /// `_baton` on zsh's fpath, or in `~/.config/fish/completions/baton.fish`.
    Completions(CompletionsArgs),
}

/// `baton completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

impl Command {
    /// Whether this command runs a node (logs at info by default) rather than a client
    /// (warn by default, so output stays clean).
    pub fn runs_a_node(&self) -> bool {
        matches!(
            self,
            Command::Server(_)
                | Command::Dev(_)
                | Command::Agent(_)
                | Command::Bench(bench::BenchCommand::LeaderKill(_))
        )
    }
}

/// What a command needs: the global options and where to print.
pub struct Ctx<'a> {
    /// Global options.
    pub global: &'a GlobalArgs,
    /// Standard output (locked once; a closed pipe surfaces as an I/O error).
    pub out: &'a mut dyn Write,
}

impl Ctx<'_> {
    /// The output format.
    pub fn format(&self) -> OutputFormat {
        self.global.output
    }

    /// Prints a table in the chosen format.
    pub fn print(&mut self, table: &Table) -> io::Result<()> {
        output::print(self.out, self.global.output, table)
    }

    /// Prints named tables in the chosen format.
    pub fn print_sections(&mut self, sections: &[(&str, &Table)]) -> io::Result<()> {
        output::print_sections(self.out, self.global.output, sections)
    }

    /// A client with the global deadline (default 5 s).
    pub fn client(&self) -> Result<Client, CliError> {
        self.client_with_default_timeout(DEFAULT_TIMEOUT)
    }

    /// A client whose deadline is `--timeout` if given, else `default`.
    pub fn client_with_default_timeout(&self, default: Duration) -> Result<Client, CliError> {
        let actor = self
            .global
            .actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .or_else(|| std::env::var("LOGNAME").ok())
            .or_else(|| std::env::var("USERNAME").ok())
            .filter(|a| !a.is_empty());
        let options = ClientOptions {
            timeout: self.global.timeout.unwrap_or(default),
            actor,
            tls: self.global.tls()?,
            token: self.global.token.clone(),
            ..ClientOptions::default()
        };
        Ok(Client::with_options(
            self.global.endpoints.clone(),
            options,
        )?)
    }
}

/// Asks `question` on the terminal. Without a terminal on stdin (scripts, CI) nothing is
/// asked and the answer is yes: a command run without a terminal never waits.
pub async fn confirm(question: String) -> Result<bool, CliError> {
    if !io::stdin().is_terminal() {
        return Ok(true);
    }
    let answer = tokio::task::spawn_blocking(move || -> io::Result<String> {
        let mut err = io::stderr();
        write!(err, "{question} [y/N] ")?;
        err.flush()?;
        let mut line = String::new();
        io::stdin().read_line(&mut line)?;
        Ok(line)
    })
    .await
    .map_err(|e| CliError::Other(format!("confirmation prompt failed: {e}")))?
    .map_err(|source| CliError::Io {
        context: "reading the confirmation".into(),
        source,
    })?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// Prints a note for people to stderr (never fails: stderr may be closed too).
pub fn note(message: &str) {
    let _ = writeln!(io::stderr().lock(), "{message}");
}

/// Parses `args`, runs the command and returns its exit code. Usage errors (and `--help`)
/// are printed by clap; other errors are returned for [`report`].
pub fn run<I, T>(args: I) -> Result<ExitCode, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" that go to stdout and exit 0.
            let code = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Ok
            };
            let _ = e.print();
            return Ok(code.into());
        }
    };
    init_tracing(&cli);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Io {
            context: "cannot start the async runtime".into(),
            source,
        })?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let result = runtime.block_on(dispatch(cli, &mut out));
    // Background tasks (a watch's stream, a prompt) must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(exit) => Ok(exit.into()),
        Err(e) if e.is_broken_pipe() => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}

/// Prints an error once, with its hint, and returns its exit code.
pub fn report(err: &CliError) -> ExitCode {
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "baton: error: {err}");
    if let Some(hint) = err.hint() {
        let _ = writeln!(stderr, "  hint: {hint}");
    }
    err.exit().into()
}

async fn dispatch(cli: Cli, out: &mut dyn Write) -> Result<Exit, CliError> {
    let mut ctx = Ctx {
        global: &cli.global,
        out,
    };
    match cli.command {
        Command::Server(args) => server::server(args).await,
        Command::Dev(args) => server::dev(args).await,
        Command::Cert(args) => cert::run(&mut ctx, args),
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "baton", ctx.out);
            Ok(Exit::Ok)
        }
        Command::Auth(cmd) => auth::run(&mut ctx, cmd),
        Command::Status => status::run(&mut ctx).await,
        Command::Primary(args) => read::primary(&mut ctx, args).await,
        Command::Services(args) => services::run(&mut ctx, args).await,
        Command::Validate(args) => read::validate(&mut ctx, args).await,
        Command::Watch(args) => watch::run(&mut ctx, args).await,
        Command::Failover(args) => moves::failover(&mut ctx, args).await,
        Command::Failback(args) => moves::failback(&mut ctx, args).await,
        Command::Plan(args) => plan::run(&mut ctx, args).await,
        Command::Approve(args) => control::decide(&mut ctx, args, true).await,
        Command::Reject(args) => control::decide(&mut ctx, args, false).await,
        Command::Freeze(args) => control::freeze(&mut ctx, args, true).await,
        Command::Unfreeze(args) => control::freeze(&mut ctx, args, false).await,
        Command::Ack(args) => control::ack(&mut ctx, args).await,
        Command::SetMode(args) => control::set_mode(&mut ctx, args).await,
        Command::Workflows(args) => workflow::list(&mut ctx, args).await,
        Command::Workflow(args) => workflow::show(&mut ctx, args).await,
        Command::Drill(args) => drill::run(&mut ctx, args).await,
        Command::Audit(args) => audit::run(&mut ctx, args).await,
        Command::Service(cmd) => service::run(&mut ctx, cmd).await,
        Command::Admin(cmd) => admin::run(&mut ctx, cmd).await,
        Command::Snapshot(cmd) => snapshot::run(&mut ctx, cmd).await,
        Command::Bench(cmd) => bench::run(&mut ctx, cmd).await,
        Command::Agent(args) => agent::run(ctx.global, args).await,
    }
}

/// Logs to stderr: `RUST_LOG` if set, else info for nodes and warn for client commands.
fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = if cli.command.runs_a_node() {
        "info,openraft=warn"
    } else {
        "warn"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    // try_init: a second initialisation (tests) is not an error worth failing for.
    let _ = if cli.global.log_json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests;
