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
//! A connection that has not sent a byte within [`HANDSHAKE_TIMEOUT`] is closed: HTTP/2
//! keepalive pings only start after the handshake, so silent sockets would otherwise stay
//! forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Most connections a node accepts at once (clients, agents and peers together).
pub const MAX_CONNECTIONS: usize = 4096;
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

/// An accepted connection; holds its slot of the budget until dropped.
pub struct Conn {
    io: TcpStream,
    /// Until the first byte arrives.
    handshake: Option<Pin<Box<Sleep>>>,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
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
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

struct Acceptor {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    backoff: Duration,
    last_warn: Option<Instant>,
}

impl Acceptor {
    /// Logs at most once a second: a flood must not turn into a flood of log lines.
    fn warn(&mut self, f: impl FnOnce()) {
        if self
            .last_warn
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_warn = Some(Instant::now());
            f();
        }
    }

    async fn next(&mut self) -> Conn {
        loop {
            match self.listener.accept().await {
                Ok((io, peer)) => {
                    self.backoff = ACCEPT_BACKOFF_MIN;
                    let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                        self.warn(|| {
                            tracing::warn!(%peer, "connection limit reached: refusing new connections")
                        });
                        drop(io);
                        continue;
                    };
                    let _ = io.set_nodelay(true);
                    return Conn {
                        io,
                        handshake: Some(Box::pin(tokio::time::sleep(HANDSHAKE_TIMEOUT))),
                        _slot: slot,
                    };
                }
                Err(e) => {
                    let pause = self.backoff;
                    self.warn(|| {
                        tracing::warn!(error = %e, ?pause, "accepting a connection failed; retrying")
                    });
                    tokio::time::sleep(pause).await;
                    self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

/// The connections accepted on `listener`, at most `limit` open at once.
pub fn incoming(
    listener: TcpListener,
    limit: usize,
) -> impl Stream<Item = Result<Conn, io::Error>> {
    let acceptor = Acceptor {
        listener,
        slots: Arc::new(Semaphore::new(limit)),
        backoff: ACCEPT_BACKOFF_MIN,
        last_warn: None,
    };
    futures::stream::unfold(acceptor, |mut a| async move {
        let conn = a.next().await;
        Some((Ok(conn), a))
    })
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
        let mut conns = Box::pin(incoming(listener, 2));
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
}
