//! Lazily connected, reused gRPC channels to the other nodes.
//!
//! One implementation for both places a node dials: peers' Raft listeners (replication, votes,
//! forwarded writes; [`super::Peers`]) and other nodes' client listeners (forwarded reads,
//! leadership transfer; `api::Ctx::links`). A node holds one pool of each, because the two
//! listeners are different addresses that want different TLS identities (`[peer_tls]` and
//! `[client_tls]`); what a channel is and how it is dialled is decided here only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::NodeId;

/// Time to establish a TCP connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 keepalive: detects a silently dead node (half-open TCP) within ~15 s.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Channels by address, created on first use and reused afterwards.
#[derive(Clone, Default)]
pub struct ChannelPool {
    /// Per-node dial address overrides (a fault-injecting proxy, another network path).
    dial: Arc<HashMap<NodeId, String>>,
    /// TLS (`https`) when set; plaintext when `None`. Shared by every clone, so a reload
    /// ([`ChannelPool::set_tls`]) reaches every holder.
    tls: Arc<RwLock<Option<ClientTlsConfig>>>,
    /// The runtime channels run on (the caller's when `None`).
    runtime: Option<tokio::runtime::Handle>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl ChannelPool {
    /// A plaintext pool dialling nodes at their advertised addresses.
    pub fn new() -> Self {
        Self::default()
    }

    /// Dials node `id` at `dial[id]` instead of its advertised address.
    pub fn with_dial(mut self, dial: HashMap<NodeId, String>) -> Self {
        self.dial = Arc::new(dial);
        self
    }

    /// Dials with TLS (`https`) when `tls` is given. Drops the channels made so far, which
    /// were dialled without it.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = Arc::new(RwLock::new(tls));
        self.channels = Arc::default();
        self
    }

    /// Dials with `tls` from now on, in every clone of this pool (rotated certificates):
    /// drops the channels made so far, so the next call to each node opens a connection
    /// with the new identity. Calls in flight finish on the old connections.
    pub fn set_tls(&self, tls: Option<ClientTlsConfig>) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        *self.tls.write().unwrap_or_else(PoisonError::into_inner) = tls;
        channels.clear();
    }

    /// Runs the channels' connection tasks on `runtime` (tonic spawns them on the runtime
    /// entered when a channel is made).
    pub fn with_runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// The address to dial for node `id` advertised at `advertised`.
    pub fn dial_addr<'a>(&'a self, id: NodeId, advertised: &'a str) -> &'a str {
        self.dial.get(&id).map_or(advertised, String::as_str)
    }

    /// The channel to node `id` advertised at `advertised` (its dial override if any).
    pub fn node(&self, id: NodeId, advertised: &str) -> Result<Channel, tonic::transport::Error> {
        self.channel(self.dial_addr(id, advertised))
    }

    /// The (lazily connecting) channel to `addr` (`host:port` or a URL).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let tls = self
            .tls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("{scheme}://{addr}")
        };
        let mut endpoint = Endpoint::from_shared(uri)?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        let _rt = self.runtime.as_ref().map(|h| h.enter());
        let ch = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .connect_lazy();
        channels.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Drops the channel to `addr` (e.g. after the node left the cluster).
    pub fn forget(&self, addr: &str) {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(addr);
    }

    /// How many channels are open (made and not forgotten).
    pub fn len(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no channel was made yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_channel_is_made_once_per_address_and_dial_overrides_win() {
        let pool = ChannelPool::new().with_dial(HashMap::from([(2, "127.0.0.1:7000".into())]));
        assert_eq!(pool.dial_addr(2, "n2:1"), "127.0.0.1:7000");
        assert_eq!(pool.dial_addr(3, "n3:1"), "n3:1");
        pool.node(2, "n2:1").unwrap();
        pool.node(2, "elsewhere:1").unwrap();
        pool.node(3, "127.0.0.1:7003").unwrap();
        assert_eq!(
            pool.len(),
            2,
            "node 2 is dialled at its override both times"
        );
        // Clones share the channels.
        let other = pool.clone();
        other.forget("127.0.0.1:7003");
        assert_eq!(pool.len(), 1);
        assert!(pool.channel("not a uri\n").is_err());
        // A new identity reaches every clone and drops the channels made with the old one.
        other.set_tls(Some(ClientTlsConfig::new()));
        assert!(pool.is_empty());
        assert!(pool.tls.read().unwrap().is_some());
    }
}
