//! A userspace L4 (TCP) fault proxy, after etcd's robustness tests: this machine has no
//! netem and we do not assume root, so WAN latency and partitions live here.
//!
//! One [`Link`] listens per *directed* link: node A's outbound connections to node B go
//! through the listener A→B, which connects onward to B. On such a connection, bytes from A
//! to B flow in the link's [`Direction::Forward`] and B's answers in
//! [`Direction::Backward`]. A [`Fabric`] holds every link and turns "bytes from X to Y are
//! cut" into the right direction of the right two links (X→Y forward and Y→X backward).
//!
//! Each direction of a connection is a pipe: a reader task stamps every chunk with a
//! delivery time (`now + latency + jitter`, never earlier than the previous chunk's, so
//! byte order is preserved) and queues it; one writer task per direction sleeps until the
//! head chunk is due and writes it. There is no task per chunk, and the bounded queue gives
//! TCP-like backpressure when a direction is held.
//!
//! Faults per direction ([`Mode`]): `Hold` stops delivery but keeps the bytes (a partition:
//! like TCP retransmitting into the void, everything arrives once healed, if the peers have
//! not given up on the connection); `Discard` drops them (a blackhole that corrupts
//! streams, so peers see protocol errors); and [`LinkHandle::drop_connections`] closes
//! every open connection (a reset). Controls are a `watch` channel: changing a link is a
//! cheap, synchronous call from any thread.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::nemesis::{Cut, NodeId};

/// A direction of a link's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting side (the link's source) to the upstream (its destination).
    Forward,
    /// Answers from the upstream back to the connecting side.
    Backward,
}

/// What happens to bytes in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Delivered after the configured latency.
    #[default]
    Open,
    /// Kept and not delivered until the direction is opened again.
    Hold,
    /// Thrown away.
    Discard,
}

/// Settings of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirConfig {
    /// One-way latency added to every chunk.
    pub latency: Duration,
    /// Up to this much extra latency, uniformly random per chunk.
    pub jitter: Duration,
    /// Fault mode.
    pub mode: Mode,
}

/// Settings of a link: both directions, and a generation that closes connections when bumped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Bytes from the link's source to its destination.
    pub forward: DirConfig,
    /// Bytes from the destination back to the source.
    pub backward: DirConfig,
    /// Connections opened under an older generation are closed.
    pub generation: u64,
}

impl LinkState {
    /// Both directions with the same latency and jitter, open.
    pub fn with_latency(latency: Duration, jitter: Duration) -> Self {
        let d = DirConfig {
            latency,
            jitter,
            mode: Mode::Open,
        };
        Self {
            forward: d,
            backward: d,
            generation: 0,
        }
    }

    fn dir(&self, d: Direction) -> &DirConfig {
        match d {
            Direction::Forward => &self.forward,
            Direction::Backward => &self.backward,
        }
    }

    fn dir_mut(&mut self, d: Direction) -> &mut DirConfig {
        match d {
            Direction::Forward => &mut self.forward,
            Direction::Backward => &mut self.backward,
        }
    }
}

/// Cheap, cloneable control of a running [`Link`].
#[derive(Clone)]
pub struct LinkHandle {
    tx: Arc<watch::Sender<LinkState>>,
}

impl LinkHandle {
    /// The current settings.
    pub fn state(&self) -> LinkState {
        *self.tx.borrow()
    }

    /// Sets one direction's latency and jitter.
    pub fn set_latency(&self, dir: Direction, latency: Duration, jitter: Duration) {
        self.tx.send_modify(|s| {
            let d = s.dir_mut(dir);
            d.latency = latency;
            d.jitter = jitter;
        });
    }

    /// Sets one direction's mode.
    pub fn set_mode(&self, dir: Direction, mode: Mode) {
        self.tx.send_modify(|s| s.dir_mut(dir).mode = mode);
    }

    /// Holds one direction (a one-way partition).
    pub fn cut(&self, dir: Direction) {
        self.set_mode(dir, Mode::Hold);
    }

    /// Holds both directions.
    pub fn cut_both(&self) {
        self.tx.send_modify(|s| {
            s.forward.mode = Mode::Hold;
            s.backward.mode = Mode::Hold;
        });
    }

    /// Discards both directions' bytes (blackhole).
    pub fn blackhole(&self) {
        self.tx.send_modify(|s| {
            s.forward.mode = Mode::Discard;
            s.backward.mode = Mode::Discard;
        });
    }

    /// Opens both directions (held bytes are then delivered).
    pub fn heal(&self) {
        self.tx.send_modify(|s| {
            s.forward.mode = Mode::Open;
            s.backward.mode = Mode::Open;
        });
    }

    /// Closes every connection open now; later connections are unaffected.
    pub fn drop_connections(&self) {
        self.tx.send_modify(|s| s.generation += 1);
    }
}

/// A running proxy listener for one directed link. Dropping it stops the listener and
/// closes its connections.
pub struct Link {
    addr: SocketAddr,
    upstream: SocketAddr,
    handle: LinkHandle,
    task: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

impl Link {
    /// Listens on `listen` (port 0 = any) and forwards every connection to `upstream`.
    /// `seed` makes the jitter reproducible.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        initial: LinkState,
        seed: u64,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(initial);
        let task = tokio::spawn(accept_loop(listener, upstream, rx, seed));
        Ok(Self {
            addr,
            upstream,
            handle: LinkHandle { tx: Arc::new(tx) },
            task,
        })
    }

    /// Where clients of this link connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the link forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Control handle.
    pub fn handle(&self) -> LinkHandle {
        self.handle.clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    rx: watch::Receiver<LinkState>,
    seed: u64,
) {
    let mut conns = JoinSet::new();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                n += 1;
                let rx = rx.clone();
                // Distinct, reproducible jitter streams per connection and direction.
                let seed = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
                conns.spawn(connection(client, upstream, rx, seed));
            }
            // Reap finished connections so the set does not grow for the whole run.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut rx: watch::Receiver<LinkState>,
    seed: u64,
) {
    let generation = rx.borrow().generation;
    let Ok(server) = TcpStream::connect(upstream).await else {
        return; // dropping the client socket tells it the peer is unreachable
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let fwd = pipe(
        cr,
        sw,
        rx.clone(),
        Direction::Forward,
        SmallRng::seed_from_u64(seed),
    );
    let bwd = pipe(
        sr,
        cw,
        rx.clone(),
        Direction::Backward,
        SmallRng::seed_from_u64(seed.wrapping_add(1)),
    );
    let reset = async move {
        loop {
            if rx.changed().await.is_err() {
                // The link is gone: close.
                return;
            }
            if rx.borrow().generation != generation {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(fwd, bwd) } => {}
        _ = reset => {}
    }
}

/// One direction: read, stamp, queue; write when due and allowed.
async fn pipe<R, W>(
    mut reader: R,
    mut writer: W,
    rx: watch::Receiver<LinkState>,
    dir: Direction,
    mut rng: SmallRng,
) where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (qtx, mut qrx) = mpsc::channel::<(Instant, Vec<u8>)>(256);
    let read_rx = rx.clone();
    let read = async move {
        let mut last = Instant::now();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let cfg = *read_rx.borrow().dir(dir);
            if cfg.mode == Mode::Discard {
                continue;
            }
            let jitter = if cfg.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(rng.random_range(0..=cfg.jitter.as_nanos() as u64))
            };
            last = last.max(Instant::now() + cfg.latency + jitter);
            if qtx.send((last, buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        // Dropping the sender lets the writer drain and then close its half.
    };
    let mut write_rx = rx;
    let write = async move {
        'chunks: while let Some((due, chunk)) = qrx.recv().await {
            tokio::time::sleep_until(due).await;
            loop {
                let mode = write_rx.borrow().dir(dir).mode;
                match mode {
                    Mode::Open => break,
                    Mode::Discard => continue 'chunks,
                    Mode::Hold => {
                        if write_rx.changed().await.is_err() {
                            return;
                        }
                    }
                }
            }
            if writer.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    };
    tokio::join!(read, write);
}

/// Every directed link of a cluster, keyed by (source, destination), with the partition
/// operations the nemesis needs. Clients and agents can take part too: give each a
/// pseudo node id (phase 2 decides) and a link per node it talks to.
#[derive(Default)]
pub struct Fabric {
    links: BTreeMap<(NodeId, NodeId), Link>,
}

impl Fabric {
    /// An empty fabric.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the listener for `from → to` on `listen`, forwarding to `upstream`; returns
    /// the address `from` must use to reach `to`.
    pub async fn add(
        &mut self,
        from: NodeId,
        to: NodeId,
        listen: SocketAddr,
        upstream: SocketAddr,
        initial: LinkState,
        seed: u64,
    ) -> io::Result<SocketAddr> {
        let link = Link::start(listen, upstream, initial, seed ^ (from << 32) ^ to).await?;
        let addr = link.addr();
        self.links.insert((from, to), link);
        Ok(addr)
    }

    /// The link `from → to`.
    pub fn link(&self, from: NodeId, to: NodeId) -> Option<LinkHandle> {
        self.links.get(&(from, to)).map(Link::handle)
    }

    /// Every link.
    pub fn links(&self) -> impl Iterator<Item = (&(NodeId, NodeId), &Link)> {
        self.links.iter()
    }

    /// Sets the one-way latency of bytes travelling from `from` to `to`, on every
    /// connection that carries them.
    pub fn set_latency(&self, from: NodeId, to: NodeId, latency: Duration, jitter: Duration) {
        if let Some(l) = self.link(from, to) {
            l.set_latency(Direction::Forward, latency, jitter);
        }
        if let Some(l) = self.link(to, from) {
            l.set_latency(Direction::Backward, latency, jitter);
        }
    }

    /// Sets the mode of bytes travelling from `from` to `to`.
    pub fn set_mode(&self, from: NodeId, to: NodeId, mode: Mode) {
        if let Some(l) = self.link(from, to) {
            l.set_mode(Direction::Forward, mode);
        }
        if let Some(l) = self.link(to, from) {
            l.set_mode(Direction::Backward, mode);
        }
    }

    /// Applies a set of cuts (from the partition maths) with `mode`, and closes the
    /// connections of every link that lost a direction when `reset` is set.
    pub fn apply_cuts<'a>(&self, cuts: impl IntoIterator<Item = &'a Cut>, mode: Mode, reset: bool) {
        for &(from, to) in cuts {
            self.set_mode(from, to, mode);
            if reset {
                for key in [(from, to), (to, from)] {
                    if let Some(l) = self.links.get(&key) {
                        l.handle().drop_connections();
                    }
                }
            }
        }
    }

    /// Opens every direction of every link.
    pub fn heal_all(&self) {
        for l in self.links.values() {
            l.handle().heal();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An echo server that also reports every chunk it received.
    async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                let _ = tx.send(buf[..n].to_vec());
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    async fn proxied(state: LinkState) -> (Link, mpsc::UnboundedReceiver<Vec<u8>>, TcpStream) {
        let (server, seen) = echo_server().await;
        let link = Link::start("127.0.0.1:0".parse().unwrap(), server, state, 1)
            .await
            .unwrap();
        let client = TcpStream::connect(link.addr()).await.unwrap();
        (link, seen, client)
    }

    async fn read_exact_timeout(s: &mut TcpStream, n: usize, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; n];
        match tokio::time::timeout(within, s.read_exact(&mut buf)).await {
            Ok(Ok(_)) => Some(buf),
            _ => None,
        }
    }

    #[tokio::test]
    async fn adds_latency_each_way_and_preserves_order() {
        let state = LinkState::with_latency(Duration::from_millis(40), Duration::from_millis(10));
        let (_link, _seen, mut c) = proxied(state).await;
        let start = StdInstant::now();
        let mut sent = Vec::new();
        for i in 0..50u8 {
            c.write_all(&[i; 7]).await.unwrap();
            sent.extend_from_slice(&[i; 7]);
        }
        let got = read_exact_timeout(&mut c, sent.len(), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(got, sent, "bytes reordered or lost");
        // Two one-way delays of at least 40 ms each (lower bound only).
        assert!(
            start.elapsed() >= Duration::from_millis(80),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn cut_holds_bytes_until_heal() {
        let (link, _seen, mut c) = proxied(LinkState::default()).await;
        c.write_all(b"ping").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut c, 4, Duration::from_secs(5))
                .await
                .unwrap(),
            b"ping"
        );
        link.handle().cut_both();
        c.write_all(b"held").await.unwrap();
        assert!(read_exact_timeout(&mut c, 4, Duration::from_millis(300))
            .await
            .is_none());
        link.handle().heal();
        assert_eq!(
            read_exact_timeout(&mut c, 4, Duration::from_secs(5))
                .await
                .unwrap(),
            b"held"
        );
    }

    #[tokio::test]
    async fn one_direction_cut_lets_the_other_through() {
        let (link, mut seen, mut c) = proxied(LinkState::default()).await;
        link.handle().cut(Direction::Backward);
        c.write_all(b"half").await.unwrap();
        // The server receives the bytes (forward is open) ...
        let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"half");
        // ... but its echo does not come back while backward is cut.
        assert!(read_exact_timeout(&mut c, 4, Duration::from_millis(300))
            .await
            .is_none());
        link.handle().heal();
        assert_eq!(
            read_exact_timeout(&mut c, 4, Duration::from_secs(5))
                .await
                .unwrap(),
            b"half"
        );
        // Forward cut only: the server hears nothing.
        link.handle().cut(Direction::Forward);
        c.write_all(b"lost").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), seen.recv())
                .await
                .is_err()
        );
        link.handle().heal();
        let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"lost");
    }

    #[tokio::test]
    async fn blackhole_discards_and_heal_resumes() {
        let (link, _seen, mut c) = proxied(LinkState::default()).await;
        link.handle().blackhole();
        c.write_all(b"gone").await.unwrap();
        assert!(read_exact_timeout(&mut c, 4, Duration::from_millis(300))
            .await
            .is_none());
        link.handle().heal();
        c.write_all(b"next").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut c, 4, Duration::from_secs(5))
                .await
                .unwrap(),
            b"next"
        );
    }

    #[tokio::test]
    async fn drop_connections_closes_open_ones_only() {
        let (link, _seen, mut c) = proxied(LinkState::default()).await;
        c.write_all(b"a").await.unwrap();
        read_exact_timeout(&mut c, 1, Duration::from_secs(5))
            .await
            .unwrap();
        link.handle().drop_connections();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "connection still open: {r:?}");
        let mut c2 = TcpStream::connect(link.addr()).await.unwrap();
        c2.write_all(b"b").await.unwrap();
        assert_eq!(
            read_exact_timeout(&mut c2, 1, Duration::from_secs(5))
                .await
                .unwrap(),
            b"b"
        );
    }

    #[tokio::test]
    async fn fabric_cuts_the_right_directions() {
        let (server_b, _seen_b) = echo_server().await;
        let (server_a, _seen_a) = echo_server().await;
        let mut f = Fabric::new();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let a_to_b = f
            .add(1, 2, any, server_b, LinkState::default(), 7)
            .await
            .unwrap();
        let b_to_a = f
            .add(2, 1, any, server_a, LinkState::default(), 7)
            .await
            .unwrap();
        // Bytes from 2 to 1 are cut: 1's requests reach 2, but 2's answers are held; 2's
        // requests to 1 are held too.
        f.apply_cuts(&[(2, 1)], Mode::Hold, false);
        assert_eq!(f.link(1, 2).unwrap().state().backward.mode, Mode::Hold);
        assert_eq!(f.link(1, 2).unwrap().state().forward.mode, Mode::Open);
        assert_eq!(f.link(2, 1).unwrap().state().forward.mode, Mode::Hold);
        let mut c = TcpStream::connect(a_to_b).await.unwrap();
        c.write_all(b"x").await.unwrap();
        assert!(read_exact_timeout(&mut c, 1, Duration::from_millis(300))
            .await
            .is_none());
        let mut d = TcpStream::connect(b_to_a).await.unwrap();
        d.write_all(b"y").await.unwrap();
        assert!(read_exact_timeout(&mut d, 1, Duration::from_millis(300))
            .await
            .is_none());
        f.heal_all();
        assert_eq!(
            read_exact_timeout(&mut c, 1, Duration::from_secs(5))
                .await
                .unwrap(),
            b"x"
        );
        assert_eq!(
            read_exact_timeout(&mut d, 1, Duration::from_secs(5))
                .await
                .unwrap(),
            b"y"
        );
    }
}
