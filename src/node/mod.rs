//! One coordinator process: storage, Raft, the API and the lease keeper wired together.
//!
//! [`Node::start`] binds the listener, opens the store, starts Raft (bootstrapping a new
//! cluster when this is the lowest-id initial peer on empty storage), the read barrier, the
//! lease keeper and the gRPC server. [`Node::stop`] steps down if it leads, ends every
//! stream, stops Raft and flushes storage.

mod admin_http;
pub mod conn;
mod peer;
mod probes;
mod raft_rt;
pub mod status;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{admin::AdminService, coordinator::CoordinatorService, AuditSource, Ctx};
use crate::config::NodeConfig;
use crate::control::{propose, KeeperTiming, ReadBarrier};
use crate::proto::{admin_server::AdminServer, coordinator_server::CoordinatorServer};
use crate::raft::network::Peers;
use crate::raft::store::{self, AuditLog};
use crate::raft::{LeaderContact, NodeId, NodeInfo, Raft};
use crate::state::{audit::AUTOMATION, AuditEntry, Command, Response as StateResponse};

/// The store's folder inside a node's `data_dir` (`baton snapshot restore` seeds it).
pub const RAFT_DIR: &str = "raft";

pub use crate::wire::{MAX_API_MESSAGE, MAX_API_REQUEST};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} — is another baton (or `baton dev`) running? stop it or change `listen`")]
    Bind {
        /// The `listen` (or `peer_listen`, `admin_listen`) address.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Storage could not be opened.
    #[error("cannot open the data directory {dir}: {message}")]
    Storage {
        /// `data_dir` as configured.
        dir: String,
        /// What sled said.
        message: String,
    },
    /// Raft refused to start or initialise.
    #[error("raft: {0}")]
    Raft(String),
    /// Anything else, said plainly.
    #[error("{0}")]
    Other(String),
}

impl AuditSource for AuditLog {
    fn list(
        &self,
        from_seq: u64,
        limit: usize,
        service: Option<&str>,
    ) -> Result<Vec<AuditEntry>, String> {
        AuditLog::list(self, from_seq, limit, service).map_err(|e| e.to_string())
    }

    fn hash_before(&self, seq: u64) -> Result<Option<String>, String> {
        AuditLog::hash_before(self, seq).map_err(|e| e.to_string())
    }

    fn oldest_seq(&self) -> Result<u64, String> {
        AuditLog::oldest_seq(self).map_err(|e| e.to_string())
    }
}

/// A running node.
pub struct Node {
    /// Node id.
    pub id: NodeId,
    /// Address the client API is bound to.
    pub addr: SocketAddr,
    /// Address the peer (Raft) listener is bound to, when separate from `addr`.
    pub peer_addr: Option<SocketAddr>,
    /// Address the admin HTTP listener (metrics, readiness) is bound to, if configured.
    pub admin_addr: Option<SocketAddr>,
    /// The Raft handle.
    pub raft: Raft,
    ctx: Arc<Ctx>,
    audit: AuditLog,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    peer_server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    raft_rt: raft_rt::RaftRuntime,
    /// Keeper, controller, probes, read barrier: awaited before Raft stops.
    tasks: tokio_util::task::TaskTracker,
    reads_stop: watch::Sender<bool>,
}

fn store_options(cfg: &NodeConfig) -> store::Options {
    store::Options {
        history_limit: cfg.storage.watch_history,
        audit_retention: cfg.storage.audit_retention,
        audit_archive: cfg.storage.audit_archive,
    }
}

fn raft_config(cfg: &NodeConfig) -> Result<crate::raft::typ::Config, NodeError> {
    let t = &cfg.timing;
    let ms = |d: Duration| d.as_millis() as u64;
    let c = crate::raft::typ::Config {
        cluster_name: cfg.cluster.clone(),
        heartbeat_interval: ms(t.heartbeat),
        election_timeout_min: ms(t.election_timeout_min),
        election_timeout_max: ms(t.election_timeout_max),
        install_snapshot_timeout: ms(t.install_snapshot_timeout),
        snapshot_policy: crate::raft::typ::SnapshotPolicy::LogsSinceLast(
            cfg.storage.snapshot_every,
        ),
        max_in_snapshot_log_to_keep: cfg.storage.keep_behind_snapshot,
        purge_batch_size: 256,
        ..Default::default()
    };
    c.validate().map_err(|e| NodeError::Raft(e.to_string()))
}

impl Node {
    /// Starts a node from its config. Returns once it serves; Raft elects in the background.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| NodeError::Bind {
                addr: cfg.listen.clone(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| NodeError::Other(e.to_string()))?;
        let peer_listener = peer::bind(&cfg).await?;
        let admin_listener = match &cfg.admin_listen {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .map_err(|source| NodeError::Bind {
                        addr: a.clone(),
                        source,
                    })?,
            ),
            None => None,
        };
        let admin_addr = match &admin_listener {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| NodeError::Other(e.to_string()))?,
            ),
            None => None,
        };
        let peer_addr = match &peer_listener {
            Some(l) => Some(
                l.local_addr()
                    .map_err(|e| NodeError::Other(e.to_string()))?,
            ),
            None => None,
        };
        let raft_dir = cfg.data_dir.join(RAFT_DIR);
        let (log, sm, audit) =
            store::open_opts(&raft_dir, &store_options(&cfg)).map_err(|e| NodeError::Storage {
                dir: raft_dir.display().to_string(),
                message: e.to_string(),
            })?;
        let shared = sm.shared();
        let changes = sm.changes();
        let dial: HashMap<NodeId, String> = cfg
            .dial
            .iter()
            .filter_map(|(k, v)| k.parse().ok().map(|id| (id, v.clone())))
            .collect();
        // Both listeners' certificates (reloaded in place) and the identities this node
        // dials peers and other nodes' client addresses with.
        let peer_tls = cfg
            .peer_tls
            .as_ref()
            .map(|c| tls::ServerTls::load(tls::TlsFiles::peer(c)))
            .transpose()?;
        let peer_dial = cfg.peer_tls.as_ref().map(tls::peer_dial).transpose()?;
        let client_tls = cfg
            .client_tls
            .as_ref()
            .map(|c| tls::ServerTls::load(tls::TlsFiles::client(c)))
            .transpose()?;
        let forward_dial = cfg
            .client_tls
            .as_ref()
            .map(|c| tls::client_dial(c, cfg.peer_tls.as_ref()))
            .transpose()?;
        if client_tls.is_none() {
            tracing::warn!(
                listen = %cfg.listen,
                "INSECURE: the client listener runs without TLS: anyone who reaches it can \
                 read and eavesdrop on it, and no caller is authenticated; configure [client_tls]"
            );
        }
        let confirmed = Arc::new(crate::raft::Confirmed::default());
        let raft_rt = raft_rt::RaftRuntime::start(cfg.id)?;
        let mut peers = Peers::new(cfg.cluster.clone(), cfg.id)
            .with_dial(dial.clone())
            .with_confirmed(confirmed.clone())
            .with_runtime(raft_rt.handle());
        if let Some(t) = peer_dial {
            peers = peers.with_tls(t);
        }
        // A rotation reaches the connections this node opens too.
        if let (Some(server), Some(c)) = (&peer_tls, &cfg.peer_tls) {
            let (c, peers) = (c.clone(), peers.clone());
            server.also_dial(tls::DialReload {
                build: Box::new(move || tls::peer_dial(&c).map_err(|e| e.to_string())),
                apply: Box::new(move |t| peers.set_tls(t)),
            });
        }
        let config = Arc::new(raft_config(&cfg)?);
        // openraft spawns its core and replication tasks on the runtime it is created on.
        let raft = raft_rt
            .run(Raft::new(cfg.id, config, peers.factory(), log, sm))
            .await?
            .map_err(|e| NodeError::Raft(e.to_string()))?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // The background tasks Node::stop waits for before it stops Raft; the read barrier
        // has a stop signal of its own, sent once the servers have drained.
        let tasks = tokio_util::task::TaskTracker::new();
        let (reads_stop, reads_stop_rx) = watch::channel(false);
        let contact = Arc::new(LeaderContact::default());
        let t = &cfg.timing;
        let reads = ReadBarrier::start(
            raft.clone(),
            peers.clone(),
            t.election_timeout_max * 2,
            confirmed,
            reads_stop_rx,
            &tasks,
        );
        let keeper = crate::control::Keeper::start(
            cfg.id,
            raft.clone(),
            shared.clone(),
            reads.clone(),
            KeeperTiming {
                drift: t.drift,
                margin: t.margin,
                tick: (t.heartbeat / 2).max(Duration::from_millis(5)),
                stall: t.election_timeout_min.max(Duration::from_millis(200)),
            },
            shutdown_rx.clone(),
            &tasks,
        );
        let recorder = crate::auth::Recorder::start(raft.clone(), peers.clone());
        let auth = crate::auth::Authority::new(&cfg.auth, raft.clone(), recorder.clone());
        // Forwarding to the leader's client listener. `dial` names peer addresses when Raft
        // has its own listener; forwarding then goes to the leader's advertised client address.
        let links = crate::raft::ChannelPool::new()
            .with_dial(if peer_listener.is_some() {
                HashMap::new()
            } else {
                dial
            })
            .with_tls(forward_dial);
        if let (Some(server), Some(c)) = (&client_tls, &cfg.client_tls) {
            let (c, peer, links) = (c.clone(), cfg.peer_tls.clone(), links.clone());
            server.also_dial(tls::DialReload {
                build: Box::new(move || {
                    tls::client_dial(&c, peer.as_ref()).map_err(|e| e.to_string())
                }),
                apply: Box::new(move |t| links.set_tls(Some(t))),
            });
        }
        let ctx = Arc::new(Ctx::new(
            cfg.id,
            cfg.region.clone(),
            cfg.cluster.clone(),
            raft.clone(),
            shared,
            changes,
            Arc::new(audit.clone()),
            reads,
            keeper,
            contact.clone(),
            cfg.timing.clone(),
            links,
            shutdown_rx.clone(),
            recorder,
        ));

        crate::control::controller::Controller::start(
            raft.clone(),
            ctx.shared.clone(),
            ctx.keeper.clone(),
            ctx.changes.clone(),
            (t.heartbeat * 2).max(Duration::from_millis(20)),
            shutdown_rx.clone(),
            &tasks,
        );
        // Warn (once per change) while the heartbeat is too short for the measured round
        // trips: every confirmation, read and renewal would be at the mercy of the network.
        {
            let (raft, peers, heartbeat) = (raft.clone(), peers.clone(), t.heartbeat);
            let mut stop = shutdown_rx.clone();
            tasks.spawn(async move {
                let mut warned = false;
                let mut every = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = every.tick() => {}
                    }
                    let m = raft.metrics().borrow().clone();
                    if m.current_leader != Some(m.id) {
                        continue;
                    }
                    let voters = m.membership_config.membership().voter_ids().count();
                    match crate::raft::heartbeat_check(heartbeat, &peers.round_trips(), voters) {
                        Some(w) if !warned => {
                            tracing::warn!("{w}");
                            warned = true;
                        }
                        None if warned => {
                            tracing::info!("round trips fit the heartbeat interval again");
                            warned = false;
                        }
                        _ => {}
                    }
                }
            });
        }
        probes::start(
            cfg.id,
            &cfg.region,
            raft.clone(),
            ctx.shared.clone(),
            ctx.changes.clone(),
            peers.clone(),
            shutdown_rx.clone(),
            &tasks,
        );

        let coordinator = crate::api::watch::WatchRoute::new(
            CoordinatorServer::new(CoordinatorService::new(ctx.clone()))
                .max_decoding_message_size(MAX_API_REQUEST)
                .max_encoding_message_size(MAX_API_MESSAGE),
            ctx.clone(),
            MAX_API_REQUEST,
            MAX_API_MESSAGE,
        );
        let admin = AdminServer::new(AdminService::new(ctx.clone()))
            .max_decoding_message_size(MAX_API_REQUEST)
            .max_encoding_message_size(MAX_API_MESSAGE);
        let raft_svc = crate::raft::service::server_verifying(
            raft.clone(),
            cfg.cluster.clone(),
            contact,
            peer_tls.is_some(),
            Some(read_index_source(ctx.reads.clone(), raft.clone())),
        );
        tls::spawn_reloader(
            peer_tls.iter().chain(client_tls.iter()).cloned().collect(),
            shutdown_rx.clone(),
        );
        let (raft_on_client, peer_server) = match peer_listener {
            Some(l) => {
                // Served (and its sockets polled) on the Raft runtime.
                let _rt = raft_rt.handle().enter();
                let l = l
                    .into_std()
                    .and_then(TcpListener::from_std)
                    .map_err(|e| NodeError::Other(format!("peer listener: {e}")))?;
                (
                    None,
                    Some(peer::serve(l, raft_svc, peer_tls, shutdown_rx.clone())),
                )
            }
            None => (Some(raft_svc), None),
        };
        // Standard probes: gRPC health (SERVING only while ready) and reflection.
        let (health_reporter, health_svc) = tonic_health::server::health_reporter();
        admin_http::track_health(ctx.clone(), health_reporter, shutdown_rx.clone());
        // Both reflection versions: older grpcurl and tools speak only v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| NodeError::Other(format!("gRPC reflection: {e}")))?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| NodeError::Other(format!("gRPC reflection: {e}")))?;
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        if let Some(l) = admin_listener {
            admin_http::serve(l, ctx.clone(), metrics.clone(), shutdown_rx.clone());
        }
        let mut stop = shutdown_rx.clone();
        let l = &cfg.limits;
        let shed = crate::api::shed::Shed::new(crate::api::shed::ShedLimits {
            rate: f64::from(l.requests_per_second_per_caller),
            burst: f64::from(l.request_burst_per_caller),
            per_caller: l.max_requests_in_flight_per_caller,
            total: l.max_requests_in_flight,
            max_callers: l.max_tracked_callers,
        });
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                // One span per request, carrying the caller's request id (or a fresh one),
                // so every log line of a request can be found together.
                .trace_fn(|req| {
                    let id = req
                        .headers()
                        .get(crate::api::REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{:016x}", rand_id()));
                    tracing::info_span!("rpc", method = %req.uri().path(), request_id = %id)
                })
                .tcp_nodelay(true)
                // A peer that stops answering pings is dropped within 15 s.
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(Duration::from_secs(5)))
                .max_concurrent_streams(cfg.limits.max_streams_per_connection.max(1))
                .layer(crate::telemetry::rpc::RpcMetricsLayer::new(metrics))
                // Per-caller rate and concurrency limits (RESOURCE_EXHAUSTED beyond).
                .layer(crate::api::shed::ShedLayer::new(shed))
                // Every client call is authenticated and checked against its role here.
                .layer(crate::auth::AuthLayer::new(auth))
                .add_service(coordinator)
                .add_service(admin)
                .add_service(health_svc)
                .add_service(reflection)
                .add_service(reflection_alpha)
                .add_optional_service(raft_on_client)
                .serve_with_incoming_shutdown(
                    conn::incoming(
                        listener,
                        conn::connection_budget(cfg.limits.max_connections),
                        client_tls,
                    ),
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                ),
        );
        tracing::info!(id = cfg.id, region = %cfg.region, %addr, ?peer_addr, cluster = %cfg.cluster, tls = cfg.client_tls.is_some(), "node serving");

        let node = Node {
            id: cfg.id,
            addr,
            peer_addr,
            admin_addr,
            raft,
            ctx,
            audit,
            shutdown: shutdown_tx,
            server,
            peer_server,
            raft_rt,
            tasks,
            reads_stop,
        };
        node.bootstrap(&cfg).await?;
        Ok(node)
    }

    /// Initialises a new cluster when this is the lowest-id initial peer and storage is empty,
    /// then creates the configured services once a leader exists.
    async fn bootstrap(&self, cfg: &NodeConfig) -> Result<(), NodeError> {
        let Some(first) = cfg.peers.iter().map(|p| p.id).min() else {
            tracing::info!("no initial peers: waiting to be added with `baton admin add-node`");
            return Ok(());
        };
        if first != cfg.id {
            return Ok(());
        }
        let initialized = self
            .raft
            .is_initialized()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        if initialized {
            return Ok(());
        }
        let members: BTreeMap<NodeId, NodeInfo> = cfg
            .peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    NodeInfo {
                        addr: p.addr.clone(),
                        region: p.region.clone(),
                    },
                )
            })
            .collect();
        tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "initialising a new cluster");
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(format!("initialising the cluster: {e}")))?;
        let specs: Vec<_> = cfg
            .services
            .iter()
            .filter_map(|s| s.to_spec().ok())
            .collect();
        if specs.is_empty() {
            return Ok(());
        }
        let raft = self.raft.clone();
        let shared = self.ctx.shared.clone();
        let id = self.id;
        tokio::spawn(async move {
            // Create the configured services as soon as this node leads; if another node
            // won the first election, it is not this node's job (and the node config of the
            // winner carries the same services when generated by `baton dev` or the launcher).
            let led = raft
                .wait(Some(Duration::from_secs(30)))
                .metrics(|m| m.current_leader.is_some(), "first leader")
                .await;
            if !matches!(led, Ok(ref m) if m.current_leader == Some(id)) {
                tracing::warn!("another node won the first election; configured services were not created here");
                return;
            }
            for spec in specs {
                let exists = shared
                    .read()
                    .map(|v| v.state.service(&spec.name).is_some())
                    .unwrap_or(true);
                if exists {
                    continue;
                }
                let name = spec.name.clone();
                let cmd = Command::PutService {
                    spec,
                    reason: "created from the node configuration at bootstrap".into(),
                };
                match propose(&raft, AUTOMATION, cmd).await {
                    Ok((_, StateResponse::Applied { .. })) => {
                        tracing::info!(service = %name, "service created")
                    }
                    Ok((_, other)) => {
                        tracing::warn!(service = %name, "service not created: {other:?}")
                    }
                    Err(e) => tracing::warn!(service = %name, "service not created: {e}"),
                }
            }
        });
        Ok(())
    }

    /// Resolves with the reason when Raft stops with a fatal error (e.g. a storage failure).
    pub async fn fatal(&self) -> String {
        let mut m = self.raft.metrics();
        loop {
            if let Err(e) = &m.borrow().running_state {
                return e.to_string();
            }
            if m.changed().await.is_err() {
                return "raft stopped".to_string();
            }
        }
    }

    /// The node's request context (for in-process use, e.g. tests and `baton dev`).
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Stops the node cleanly: hands leadership to another voter if it leads, ends every
    /// watch and keepalive stream, stops Raft and flushes storage.
    pub async fn stop(self) -> Result<(), NodeError> {
        if self.ctx.keeper.is_leading() {
            let voters = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .count();
            if voters > 1 {
                match tokio::time::timeout(
                    Duration::from_secs(5),
                    crate::api::transfer::transfer(&self.ctx, 0),
                )
                .await
                {
                    Ok(Ok(l)) => {
                        tracing::info!(new_leader = l, "handed leadership over before stopping")
                    }
                    Ok(Err(e)) => tracing::warn!("could not hand leadership over: {}", e.message()),
                    Err(_) => tracing::warn!("could not hand leadership over in time"),
                }
            }
        }
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(Duration::from_secs(5), self.server).await {
            Ok(Ok(Err(e))) => tracing::warn!("server stopped with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("server task failed: {e}"),
            Err(_) => tracing::warn!("server did not drain within 5s"),
            Ok(Ok(Ok(()))) => {}
        }
        if let Some(peer_server) = self.peer_server {
            match tokio::time::timeout(Duration::from_secs(5), peer_server).await {
                Ok(Ok(Err(e))) => tracing::warn!("peer server stopped with an error: {e}"),
                Ok(Err(e)) => tracing::warn!("peer server task failed: {e}"),
                Err(_) => tracing::warn!("peer server did not drain within 5s"),
                Ok(Ok(Ok(()))) => {}
            }
        }
        // The servers have drained: no reader is left to serve. Wait for the background
        // tasks (they saw the shutdown signal) so none of them acts on a stopping Raft.
        let _ = self.reads_stop.send(true);
        self.tasks.close();
        let running = self.tasks.len();
        match tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await {
            Ok(()) => tracing::info!(tasks = running, "background tasks stopped"),
            Err(_) => tracing::warn!(
                still_running = self.tasks.len(),
                "background tasks did not stop within 5s; stopping Raft anyway"
            ),
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        drop(self.raft_rt);
        self.audit
            .flush()
            .await
            .map_err(|e| NodeError::Other(format!("flushing storage: {e}")))?;
        tracing::info!(id = self.id, "node stopped");
        Ok(())
    }
}

/// A request id for requests that carry none: unique enough for correlating logs.
fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a node until SIGINT/SIGTERM, then stops it cleanly.
pub async fn run_server(config: NodeConfig) -> Result<(), NodeError> {
    let node = Node::start(config).await?;
    tokio::select! {
        _ = stop_signal() => {
            tracing::info!("stop signal received; stopping");
            node.stop().await
        }
        fatal = node.fatal() => {
            // Raft stops for good on a storage error (disk full, read-only, I/O error): a
            // node that cannot persist must not linger half-alive. Exit non-zero so the
            // supervisor restarts it once the disk is fixed; it recovers from its log.
            tracing::error!("raft stopped: {fatal}; exiting so the node can be restarted");
            let _ = node.stop().await;
            Err(NodeError::Raft(format!(
                "{fatal} — fix the data directory (space, permissions) and restart the node"
            )))
        }
    }
}

/// The leader's answer to a follower's `ReadIndex`: a round of its read barrier (batched
/// with its own readers, paused during a transfer), then its applied index, which the
/// round guarantees covers everything committed when the round started.
fn read_index_source(reads: ReadBarrier, raft: Raft) -> crate::raft::service::ReadIndexFn {
    use crate::raft::ForwardReject;
    Arc::new(move || {
        let (reads, raft) = (reads.clone(), raft.clone());
        Box::pin(async move {
            match reads.linearize().await {
                Ok(()) => Ok(raft.metrics().borrow().last_applied.map_or(0, |l| l.index)),
                Err(crate::control::ControlError::NotLeader(l)) => Err(ForwardReject::NotLeader {
                    leader_id: l.as_ref().map(|(id, _)| *id),
                    leader: l.map(|(_, n)| n),
                }),
                Err(e) => Err(ForwardReject::Failed(e.to_string())),
            }
        })
    })
}
