//! The peer listener: the internal `baton.v1.Raft` service on its own address
//! (`peer_listen`), so the client address does not expose Raft. Without `peer_listen` the
//! node serves Raft on the client address as before, and says loudly that anyone who
//! reaches that address can then speak Raft to it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::tls::ServerTls;
use super::NodeError;
use crate::config::NodeConfig;
use crate::proto::raft_server::RaftServer;
use crate::raft::service::RaftService;

/// Most connections the peer listener holds at once: peers need one each (a few more while
/// they reconnect). Within the descriptors `conn::FD_RESERVE` keeps apart from client
/// connections, so a flood of the peer port cannot exhaust them either.
pub const PEER_CONNECTIONS: usize = 64;

/// The bound peer listener, or `None` when Raft shares the client listener.
pub(super) async fn bind(cfg: &NodeConfig) -> Result<Option<TcpListener>, NodeError> {
    let Some(addr) = &cfg.peer_listen else {
        tracing::warn!(
            listen = %cfg.listen,
            "INSECURE: no `peer_listen`: the internal Raft service is served on the client \
             address, where any client can reach it; set peer_listen (and [peer_tls])"
        );
        return Ok(None);
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    if cfg.peer_tls.is_none() {
        tracing::warn!(
            peer_listen = %addr,
            "INSECURE: the peer listener runs without TLS: anyone who reaches it can send \
             Raft messages claiming a member's id; configure [peer_tls]"
        );
    }
    Ok(Some(listener))
}

/// Serves the Raft service alone on `listener` until `stop` turns true; with `tls`, only to
/// peers presenting a certificate of the cluster CA (reloaded when its files change).
pub(super) fn serve(
    listener: TcpListener,
    raft: RaftServer<RaftService>,
    tls: Option<Arc<ServerTls>>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    tokio::spawn(
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .add_service(raft)
            // Capped, with a backoff on accept errors: tonic's own incoming retries a failed
            // accept at once, which spun a core when descriptors ran out.
            .serve_with_incoming_shutdown(
                super::conn::incoming(listener, PEER_CONNECTIONS, tls),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ),
    )
}
