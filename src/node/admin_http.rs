//! The admin HTTP listener (`admin_listen`): `/metrics` (Prometheus), `/healthz` (the process
//! answers) and `/readyz` (it knows a leader and its state is current), the live status page
//! (`/`, `/status.json`, `/events`: see [`super::status`]), plus the gRPC health status kept
//! in step with readiness.
//!
//! HTTP/1.1 through hyper. The listener is for monitoring and should be reachable only from
//! the monitoring network: it needs no credentials and shows what the metrics show (service
//! names, regions, tokens), never health-check targets or audit contents.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::status::{self, SseSlots};
use crate::api::Ctx;
use crate::telemetry::{self, Metrics, NodeView};

/// Most admin connections served at once: scrapers and probes are few, and this leaves
/// them room beside [`status::MAX_SSE_CLIENTS`] open status pages.
const MAX_ADMIN_CONNECTIONS: usize = 2 * status::MAX_SSE_CLIENTS;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the node can serve linearizable requests: it knows a leader and its state is
/// current (confirmed or heard from the leader within an election timeout). Why not, else.
pub(super) fn readiness(ctx: &Ctx) -> Result<(), String> {
    if ctx.leader().is_none() {
        return Err("no leader known (an election may be in progress, or no quorum)".into());
    }
    if !ctx.is_current() {
        return Err(format!(
            "state may be stale: last leader contact or confirmation {} ms ago",
            ctx.staleness_ms()
        ));
    }
    Ok(())
}

/// The highest index known committed: on the leader, the one a majority of voters has
/// (openraft's metrics do not report it); elsewhere, what this node has applied.
fn committed(m: &crate::raft::Metrics) -> u64 {
    let applied = m.last_applied.map_or(0, |l| l.index);
    let Some(repl) = m.replication.as_ref() else {
        return applied;
    };
    let mut matched: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|id| {
            if id == m.id {
                m.last_log_index.unwrap_or(0)
            } else {
                repl.get(&id).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
            }
        })
        .collect();
    matched.sort_unstable_by(|a, b| b.cmp(a));
    matched
        .get(matched.len() / 2)
        .copied()
        .unwrap_or(applied)
        .max(applied)
}

/// What a scrape reads from the node.
fn view(ctx: &Ctx) -> NodeView {
    let m = ctx.raft.metrics().borrow().clone();
    NodeView {
        id: ctx.id,
        region: ctx.region.clone(),
        term: m.current_term,
        leader: m.current_leader.unwrap_or(0),
        committed: committed(&m),
        applied: m.last_applied.map_or(0, |l| l.index),
        last_log: m.last_log_index.unwrap_or(0),
        staleness_ms: Some(ctx.staleness_ms()).filter(|s| *s != u64::MAX),
        renewal_age: ctx
            .keeper
            .renewal_ages()
            .into_iter()
            .map(|(s, d)| (s, d.as_secs_f64()))
            .collect(),
        watchers: ctx.watchers.open(),
        keepalive_streams: crate::api::keepalive::OPEN_STREAMS
            .load(std::sync::atomic::Ordering::Relaxed),
    }
}

type Body = UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: String, content_type: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// Headers of the status page's answers: never cached (it is live), and the page may load
/// nothing from elsewhere and talk only to this listener.
fn live(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        hyper::header::CONTENT_SECURITY_POLICY,
        hyper::header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn answer(
    ctx: &Arc<Ctx>,
    metrics: &Metrics,
    sse: &SseSlots,
    req: &Request<Incoming>,
) -> Response<Body> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".into(),
            PLAIN,
        );
    }
    match req.uri().path() {
        "/metrics" => {
            metrics.observe_leader(ctx.leader().map_or(0, |(id, _)| id));
            let body = {
                let v = view(ctx);
                let shared = ctx.shared.read().unwrap_or_else(|e| e.into_inner());
                telemetry::render(metrics, &v, &shared.state)
            };
            text(
                StatusCode::OK,
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        "/" => live(text(
            StatusCode::OK,
            status::page(&status::snapshot(ctx)),
            "text/html; charset=utf-8",
        )),
        "/status.json" => live(text(
            StatusCode::OK,
            status::to_json(&status::snapshot(ctx)),
            "application/json",
        )),
        "/events" => match sse.admit() {
            Some(slot) => {
                let body = StreamBody::new(status::events(ctx.clone(), slot));
                let mut r = Response::new(BodyExt::boxed_unsync(body));
                if let Ok(v) = "text/event-stream".parse() {
                    r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
                }
                live(r)
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many open status streams (limit {}); close some status pages or \
                     poll /status.json instead\n",
                    status::MAX_SSE_CLIENTS
                ),
                PLAIN,
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into(), PLAIN),
        "/readyz" => match readiness(ctx) {
            Ok(()) => text(StatusCode::OK, "ready\n".into(), PLAIN),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
                PLAIN,
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try / (status page), /status.json, /events, /metrics, /healthz or /readyz\n".into(),
            PLAIN,
        ),
    }
}

/// Serves the admin listener until `stop` turns true.
pub(super) fn serve(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    let sse = SseSlots::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                a = listener.accept() => a,
            };
            let (stream, peer): (_, SocketAddr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("admin listener: accept failed: {e}");
                    // Descriptors may be exhausted: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Over the cap the connection is closed at once.
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let ctx = ctx.clone();
            let metrics = metrics.clone();
            let sse = sse.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let r = answer(&ctx, &metrics, &sse, &req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, "admin connection: {e}");
                        }
                    }
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
        }
    })
}

/// Keeps the gRPC health status (`grpc.health.v1.Health`, for the whole server and for
/// `baton.v1.Coordinator`) SERVING only while the node is ready.
pub(super) fn track_health(
    ctx: Arc<Ctx>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                // Stopped, or the node is gone (sender dropped): either way, stop.
                _ = stop.wait_for(|s| *s) => true,
                _ = tick.tick() => false,
            };
            if stopping {
                for name in ["", "baton.v1.Coordinator", "baton.v1.Admin"] {
                    reporter
                        .set_service_status(name, tonic_health::ServingStatus::NotServing)
                        .await;
                }
                return;
            }
            let ready = readiness(&ctx).is_ok();
            if last != Some(ready) {
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                for name in ["", "baton.v1.Coordinator", "baton.v1.Admin"] {
                    reporter.set_service_status(name, status).await;
                }
                last = Some(ready);
            }
        }
    })
}
