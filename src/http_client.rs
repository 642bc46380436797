//! The one HTTP/1.1 client behind baton's outbound calls (HTTP health probes, webhook steps,
//! `baton dev outage|heal`): hyper on a fresh connection per request, the whole exchange
//! bounded by a timeout, the body read only as far as the caller needs and never past a cap.
//!
//! No connection pool: these calls are rare, and a probe must see what a new client would
//! see, not pass on a connection the server accepted long ago.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

// Callers name methods and statuses without depending on hyper themselves.
pub use hyper::{Method, StatusCode};

/// How many of the server's first bytes are kept, to show what answered when it is not HTTP.
const RECORDED: usize = 64;
/// hyper's smallest read buffer (it panics when asked for less).
const MIN_READ_BUFFER: usize = 8 * 1024;

/// A request carrying `body` that asks the server to close the connection after answering.
/// `authority` goes in `Host`, `path` (with any query) in the request line. Fails, rather
/// than sending something malformed, when the path or a header cannot be sent as is (a
/// space, a control character).
pub fn request(
    method: Method,
    authority: &str,
    path: &str,
    headers: &[(&'static str, &str)],
    body: impl Into<Bytes>,
) -> Result<Request<Full<Bytes>>, String> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(body.into()))
        .map_err(|e| format!("cannot send a request to {authority}{path}: {e}"))
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    /// The response status.
    pub status: StatusCode,
    /// The body as far as it was read (see `end`).
    pub body: Vec<u8>,
    /// Why reading the body stopped.
    pub end: BodyEnd,
}

/// Why [`fetch`] stopped reading the body.
#[derive(Debug)]
pub enum BodyEnd {
    /// The body ended: all of it is in [`Answer::body`].
    Complete,
    /// The caller had seen enough.
    Enough,
    /// The cap was reached: the body holds its first `cap` bytes.
    Capped,
    /// The body was cut short (connection closed early, malformed chunk): what came is kept.
    Failed(hyper::Error),
}

/// Why there is no answer.
#[derive(Debug)]
pub enum Error {
    /// The TCP connection could not be made.
    Connect(io::Error),
    /// The connection failed or the server's answer is not an HTTP/1.x response head.
    /// `received` holds the server's first bytes (up to 64), to show what answered.
    Exchange {
        /// hyper's error.
        error: hyper::Error,
        /// The first bytes the server sent.
        received: Vec<u8>,
    },
    /// No answer within the timeout.
    Timeout,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::Exchange { error, .. } => f.write_str(&chain(error).join(": ")),
            Self::Timeout => f.write_str("timeout"),
        }
    }
}

impl StdError for Error {}

/// The distinct messages of an error and its sources (hyper's top message alone is often
/// vague: the cause, e.g. "Connection reset by peer", is in its source).
pub fn chain(e: &(dyn StdError + 'static)) -> Vec<String> {
    let mut messages: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let message = err.to_string();
        if !message.is_empty() && !messages.iter().any(|m| m.contains(&message)) {
            messages.push(message);
        }
        current = err.source();
    }
    messages
}

/// Sends `request` to `addr` (`host:port`) on a new connection and reads the answer: the
/// status, then body frames until the body ends, `enough(status, body so far)` says so
/// (it is asked before each read, first with an empty body) or `cap` bytes are kept. The
/// connection is closed when this returns. Everything, name resolution included, is bounded
/// by `timeout`.
pub async fn fetch(
    addr: &str,
    request: Request<Full<Bytes>>,
    timeout: Duration,
    cap: usize,
    enough: impl FnMut(StatusCode, &[u8]) -> bool,
) -> Result<Answer, Error> {
    tokio::time::timeout(timeout, exchange(addr, request, cap, enough))
        .await
        .unwrap_or(Err(Error::Timeout))
}

async fn exchange(
    addr: &str,
    request: Request<Full<Bytes>>,
    cap: usize,
    mut enough: impl FnMut(StatusCode, &[u8]) -> bool,
) -> Result<Answer, Error> {
    let stream = TcpStream::connect(addr).await.map_err(Error::Connect)?;
    let received = Arc::new(Mutex::new(Vec::new()));
    let io = TokioIo::new(Recorder {
        inner: stream,
        received: received.clone(),
    });
    let failed = |error: hyper::Error| Error::Exchange {
        error,
        received: received.lock().unwrap_or_else(|e| e.into_inner()).clone(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Some servers (and our tests) match header names as usually written.
        .title_case_headers(true)
        // The response head must fit in the cap as well.
        .max_buf_size(cap.max(MIN_READ_BUFFER))
        .handshake(io)
        .await
        .map_err(failed)?;
    let call = async {
        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        let mut body = response.into_body();
        let mut kept: Vec<u8> = Vec::new();
        let end = loop {
            if enough(status, &kept) {
                break BodyEnd::Enough;
            }
            if kept.len() >= cap {
                break BodyEnd::Capped;
            }
            match body.frame().await {
                None => break BodyEnd::Complete,
                Some(Err(e)) => break BodyEnd::Failed(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = cap - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
            }
        };
        Ok(Answer {
            status,
            body: kept,
            end,
        })
    };
    // The connection is driven here rather than spawned, so it ends (and the socket closes)
    // when the answer is read. If it ends first, its error reaches the call as well.
    tokio::pin!(call);
    tokio::pin!(conn);
    tokio::select! {
        answer = &mut call => answer,
        _ = &mut conn => call.await,
    }
}

/// A stream that keeps a copy of the first bytes read from it.
struct Recorder {
    inner: TcpStream,
    received: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorder {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let mut received = self.received.lock().unwrap_or_else(|e| e.into_inner());
            let new = &buf.filled()[before..];
            let room = RECORDED.saturating_sub(received.len());
            received.extend_from_slice(&new[..new.len().min(room)]);
        }
        polled
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Answers one connection with `reply` after reading the request (one read); returns
    /// the address and what was received.
    async fn server(reply: &'static [u8]) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).await.unwrap_or(0);
            let _ = conn.write_all(reply).await;
            // Keep the connection open: the client must stop by itself.
            tokio::time::sleep(Duration::from_secs(5)).await;
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn posts_in_one_write_and_reads_the_body_up_to_its_length() {
        let (addr, task) = server(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").await;
        let req = request(
            Method::POST,
            &addr,
            "/hook?x=1",
            &[("x-baton-test", "yes")],
            "{\"a\":1}",
        )
        .unwrap();
        let answer = fetch(&addr, req, Duration::from_secs(2), 1024, |_, _| false)
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(answer.body, b"ok");
        assert!(matches!(answer.end, BodyEnd::Complete));
        task.abort();
    }

    #[tokio::test]
    async fn stops_at_the_cap_or_when_the_caller_has_enough() {
        let (addr, _task) = server(b"HTTP/1.1 200 OK\r\n\r\n0123456789abcdef").await;
        let req = request(Method::GET, &addr, "/", &[], Bytes::new()).unwrap();
        let answer = fetch(&addr, req, Duration::from_secs(2), 10, |_, _| false)
            .await
            .unwrap();
        assert_eq!(answer.body, b"0123456789");
        assert!(matches!(answer.end, BodyEnd::Capped));

        let (addr, _task) = server(b"HTTP/1.1 500 Oops\r\n\r\n").await;
        let req = request(Method::GET, &addr, "/", &[], Bytes::new()).unwrap();
        let answer = fetch(&addr, req, Duration::from_secs(2), 10, |s, _| {
            !s.is_success()
        })
        .await
        .unwrap();
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(matches!(answer.end, BodyEnd::Enough));
    }

    #[tokio::test]
    async fn keeps_the_first_bytes_of_an_answer_that_is_not_http() {
        let (addr, _task) = server(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        let req = request(Method::GET, &addr, "/", &[], Bytes::new()).unwrap();
        match fetch(&addr, req, Duration::from_secs(2), 1024, |_, _| false).await {
            Err(Error::Exchange { received, .. }) => {
                assert!(received.starts_with(b"SSH-2.0"), "{received:?}")
            }
            other => panic!("{other:?}"),
        }
        assert!(request(Method::GET, "h", "/a b", &[], Bytes::new()).is_err());
    }
}
