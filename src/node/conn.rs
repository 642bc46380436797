//! Accepting client and peer connections within a file-descriptor budget.
//!
//! The budget: a node needs descriptors for its storage (sled files), its outbound channels
//! to peers and probe targets, and its logs — [`FD_RESERVE`] keeps those free. The rest of
//! `RLIMIT_NOFILE` (raised to its hard limit at start), at most [`MAX_CONNECTIONS`], is for
//! accepted connections. At the cap, a new connection is accepted and closed at once (the
//! caller sees a reset and tries another node) so the listen backlog never fills; an accept
//! error (descriptors exhausted anyway, by something else) is logged once a second and
//! retried with a backoff instead of a busy loop. Neither ever stops the node.
//!
//! A connection that has not sent a byte of application data within [`HANDSHAKE_TIMEOUT`]
//! (its TLS handshake included) is closed: HTTP/2 keepalive pings only start after the
//! handshake, so silent sockets would otherwise stay forever.
//!
//! With TLS, each handshake runs in its own task, so a slow client never holds up the
//! accept loop; every request then carries a [`ConnInfo`] with the verified client
//! certificate and its names.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::Connected;

use super::tls::ServerTls;
use crate::connection::{CertIdentity, ConnInfo};

pub use crate::config::limits::MAX_CONNECTIONS;
/// Descriptors kept free for storage, outbound channels and logs.
pub const FD_RESERVE: u64 = 256;
/// Time a new connection has to send its first byte.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept, doubling up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Raises the soft descriptor limit to the hard one and returns how many connections fit
/// in it next to [`FD_RESERVE`] (at most `wanted`).
pub fn connection_budget(wanted: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    let nofile = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let room = nofile.saturating_sub(FD_RESERVE) as usize;
    if room < wanted {
        tracing::warn!(
            nofile,
            connections = room,
            "the descriptor limit (ulimit -n) leaves room for only {room} connections; raise it \
             to at least {} for {wanted}",
            wanted as u64 + FD_RESERVE
        );
    }
    room.clamp(1, wanted.max(1))
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection (after its TLS handshake, if any); holds its slot of the budget
/// until dropped.
pub struct Conn {
    io: Io,
    info: ConnInfo,
    /// Until the first byte of application data arrives.
    handshake: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

macro_rules! io {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.io {
            Io::Plain($io) => {
                let $io = Pin::new($io);
                $e
            }
            Io::Tls($io) => {
                let $io = Pin::new(&mut **$io);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = io!(self, io => io.poll_read(cx, buf));
        if let Some(deadline) = self.handshake.as_mut() {
            match &res {
                Poll::Ready(Ok(())) if buf.filled().len() > before => self.handshake = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no data within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        res
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        io!(self, io => io.poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self, io => io.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }
}

/// Logs at most once a second: a flood must not turn into a flood of log lines.
struct Throttle(Option<Instant>);

impl Throttle {
    fn warn(&mut self, f: impl FnOnce()) {
        if self.0.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            self.0 = Some(Instant::now());
            f();
        }
    }
}

struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    backoff: Duration,
    throttle: Throttle,
}

impl Acceptor {
    /// The next TCP connection within the budget, with its slot.
    async fn next(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            match self.listener.accept().await {
                Ok((io, peer)) => {
                    self.backoff = ACCEPT_BACKOFF_MIN;
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        self.throttle.warn(|| {
                            tracing::warn!(%peer, "connection limit reached: refusing new connections")
                        });
                        drop(io);
                        continue;
                    };
                    let _ = io.set_nodelay(true);
                    return (io, peer, slot);
                }
                Err(e) => {
                    let pause = self.backoff;
                    self.throttle.warn(|| {
                        tracing::warn!(error = %e, ?pause, "accepting a connection failed; retrying")
                    });
                    tokio::time::sleep(pause).await;
                    self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// Logs failed TLS handshakes at most once a second per listener (a scan or a flood of
/// plaintext clients must not flood the log), with the last cause.
type HandshakeLog = Arc<std::sync::Mutex<Throttle>>;

/// Runs the TLS handshake of `io` within the handshake deadline; the connection with what
/// it proved, or `None` (logged) when the handshake failed or timed out.
async fn handshake(
    tls: &ServerTls,
    io: TcpStream,
    peer: SocketAddr,
    mut deadline: Pin<Box<Sleep>>,
    log: &HandshakeLog,
) -> Option<(Io, ConnInfo, Pin<Box<Sleep>>)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
    let res = tokio::select! {
        r = acceptor.accept(io) => r,
        _ = deadline.as_mut() => Err(io::Error::new(io::ErrorKind::TimedOut, "no TLS handshake within the handshake timeout")),
    };
    let stream = match res {
        Ok(s) => s,
        Err(e) => {
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .warn(|| {
                    tracing::warn!(%peer, error = %e, "TLS handshake failed (a plaintext client, an unknown or expired certificate?)")
                });
            return None;
        }
    };
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| Arc::new(c.to_vec()));
    let identity = certs
        .as_ref()
        .and_then(|c| c.first())
        .map(|leaf| CertIdentity {
            names: super::tls::cert_names(leaf),
        });
    let info = ConnInfo::verified(peer, certs, identity);
    Some((Io::Tls(Box::new(stream)), info, deadline))
}

/// The connections accepted on `listener`, at most `limit` open at once (TLS handshakes
/// in progress count), with TLS when `tls` is given. Handshakes run in their own tasks so a
/// slow one never holds up accepting; a failed one closes its connection. Accepting stops
/// when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    limit: usize,
    tls: Option<Arc<ServerTls>>,
) -> impl Stream<Item = Result<Conn, io::Error>> {
    let mut acceptor = Acceptor {
        listener,
        slots: Arc::new(Semaphore::new(limit)),
        backoff: ACCEPT_BACKOFF_MIN,
        throttle: Throttle(None),
    };
    let (tx, rx) = mpsc::channel::<Conn>(64);
    let log: HandshakeLog = Arc::new(std::sync::Mutex::new(Throttle(None)));
    tokio::spawn(async move {
        loop {
            let (io, peer, slot) = tokio::select! {
                next = acceptor.next() => next,
                // The server stopped: release the listening socket.
                _ = tx.closed() => return,
            };
            let deadline = Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT));
            match &tls {
                None => {
                    let conn = Conn {
                        io: Io::Plain(io),
                        info: ConnInfo::plain(peer),
                        handshake: Some(deadline),
                        _slot: slot,
                    };
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx, log) = (tls.clone(), tx.clone(), log.clone());
                    tokio::spawn(async move {
                        if let Some((io, info, deadline)) =
                            handshake(&tls, io, peer, deadline, &log).await
                        {
                            let conn = Conn {
                                io,
                                info,
                                handshake: Some(deadline),
                                _slot: slot,
                            };
                            let _ = tx.send(conn).await;
                        }
                    });
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok)
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn over_the_cap_is_closed_at_once_and_slots_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Box::pin(incoming(listener, 2, None));
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..2 {
            clients.push(TcpStream::connect(addr).await.unwrap());
            held.push(conns.next().await.unwrap().unwrap());
        }
        // The third is accepted and closed: its read sees EOF, while the two held ones
        // stay open.
        let mut third = TcpStream::connect(addr).await.unwrap();
        let accept_more = tokio::spawn(async move {
            let c = conns.next().await;
            (conns, c)
        });
        let mut buf = [0u8; 8];
        assert_eq!(third.read(&mut buf).await.unwrap(), 0);
        let still_open =
            tokio::time::timeout(Duration::from_millis(100), clients[0].read(&mut buf)).await;
        assert!(still_open.is_err(), "a held connection was closed");
        // Closing one frees its slot for the next.
        drop(held.pop());
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let (_conns, c) = accept_more.await.unwrap();
        assert!(c.is_some());
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate for `alice`, as
    /// files in `dir`; the server's TLS (client certificates required) and a client config.
    fn pki(dir: &std::path::Path) -> (Arc<ServerTls>, Arc<rustls::ClientConfig>) {
        use crate::pki as cert;
        let (ca, ca_key) = cert::make_ca("t").unwrap();
        let (node, node_key) = cert::make_node(1, &[], &ca, &ca_key).unwrap();
        let (alice, alice_key) = cert::make_client("alice", &ca, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("n.pem"), node.pem()).unwrap();
        std::fs::write(dir.join("n.key"), node_key.serialize_pem()).unwrap();
        let server = ServerTls::load(super::super::tls::TlsFiles {
            label: "client_tls",
            ca: Some(dir.join("ca.pem")),
            cert: dir.join("n.pem"),
            key: dir.join("n.key"),
            client_auth: crate::config::ClientAuth::Required,
        })
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(alice_key.serialize_der()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![alice.der().clone()], key)
        .unwrap();
        (server, Arc::new(client))
    }

    #[tokio::test]
    async fn a_verified_client_certificate_names_the_caller_and_a_silent_one_blocks_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let (server, client) = pki(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Box::pin(incoming(listener, 8, Some(server)));
        // A connection that never starts its handshake is accepted first...
        let silent = TcpStream::connect(addr).await.unwrap();
        // ...and does not hold up the next one's handshake.
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let handshake = tokio::spawn(async move {
            let mut tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            // TLS 1.3 finishes the client side before the server has checked it; a byte
            // of application data lets the server's side complete.
            tokio::io::AsyncWriteExt::write_all(&mut tls, b"x")
                .await
                .unwrap();
            tls
        });
        let conn = conns.next().await.unwrap().unwrap();
        let _client = handshake.await.unwrap();
        // The silent one is still waiting (not closed by a handshake timeout that the
        // second connection would have had to wait out, were handshakes run in turn).
        let mut buf = [0u8; 1];
        assert_eq!(
            silent.try_read(&mut buf).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        let info = conn.connect_info();
        let names = info.identity().map(|i| i.names.clone());
        assert_eq!(names, Some(vec!["alice".to_string()]));
        assert_eq!(info.peer_certs().map(<[_]>::len), Some(1));
        assert_eq!(info.remote.map(|a| a.ip()), Some(addr.ip()));
        // What authorization reads from a request carrying this connection's info.
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(info);
        assert_eq!(
            crate::auth::CertIdentity::of(&req).map(|i| i.names.clone()),
            Some(vec!["alice".to_string()])
        );
        assert_eq!(ConnInfo::remote_addr(&req).map(|a| a.ip()), Some(addr.ip()));
        // Plaintext: no identity.
        assert!(crate::auth::CertIdentity::of(&tonic::Request::new(())).is_none());
    }
}
