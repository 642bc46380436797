//! The client against fake in-process nodes on 127.0.0.1: leader following, failover
//! between endpoints, retry rules for writes, watch resume and compaction.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::codegen::{http, Body, Service, StdError};
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::proto::{
    AckRequest, AckResponse, ApproveRequest, ApproveResponse, FailbackRequest, FailoverRequest,
    FailoverResponse, FreezeRequest, FreezeResponse, GetPrimaryRequest, GetPrimaryResponse,
    GetWorkflowRequest, KeepAliveRequest, KeepAliveResponse, Lease, ListWorkflowsRequest,
    ListWorkflowsResponse, PlanRequest, PlanResponse, SetModeRequest, SetModeResponse,
    WatchRequest, WatchResponse, Workflow,
};

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// What one scripted watch stream sends: items, then (if `then_hang`) stays open.
#[derive(Clone)]
struct WatchScript {
    items: Vec<Result<WatchResponse, (tonic::Code, String)>>,
    then_hang: bool,
}

/// How a fake node behaves.
#[derive(Clone, Default)]
struct Behaviour {
    /// Answer leader-only calls with a not-leader status naming this address.
    not_leader_hint: Option<String>,
    /// Answer GetPrimary successfully but name this leader (a forwarding follower).
    forwarded_from: Option<String>,
    /// Never answer a Failover, a Failback or an Approve.
    hang_failover: bool,
    /// Answer GetPrimary with this error.
    primary_error: Option<(tonic::Code, String)>,
    /// Watch streams to serve, in order.
    watches: Arc<Mutex<VecDeque<WatchScript>>>,
}

#[derive(Clone)]
struct Fake {
    id: u64,
    b: Behaviour,
    calls: Arc<AtomicUsize>,
    watch_starts: Arc<Mutex<Vec<u64>>>,
}

impl Fake {
    fn not_leader(&self) -> Option<Status> {
        self.b.not_leader_hint.as_ref().map(|addr| {
            let mut s = Status::unavailable(format!(
                "node {} is not the leader; the leader is node 9 at {addr}",
                self.id
            ));
            if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                s.metadata_mut().insert(LEADER_METADATA, v);
            }
            s
        })
    }
}

fn lease(token: u64) -> Lease {
    Lease {
        service: "payments".into(),
        holder_region: "us-east".into(),
        token,
        ttl_ms: 3000,
        state: proto::LeaseState::Held as i32,
        ..Lease::default()
    }
}

fn watch_resp(revision: u64) -> WatchResponse {
    WatchResponse {
        revision,
        events: vec![proto::WatchEvent {
            kind: proto::EventKind::Granted as i32,
            service: "payments".into(),
            revision,
            lease: Some(lease(revision)),
            ..proto::WatchEvent::default()
        }],
        progress: false,
        served_by: 0,
    }
}

impl Fake {
    async fn get_primary(
        &self,
        _r: Request<GetPrimaryRequest>,
    ) -> Result<Response<GetPrimaryResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(s) = self.not_leader() {
            return Err(s);
        }
        if let Some((code, msg)) = &self.b.primary_error {
            return Err(Status::new(*code, msg.clone()));
        }
        let mut resp = Response::new(GetPrimaryResponse {
            lease: Some(lease(7)),
            revision: 10,
            served_by: self.id,
            linearizable: true,
            staleness_ms: 0,
        });
        if let Some(addr) = &self.b.forwarded_from {
            if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                resp.metadata_mut().insert(LEADER_METADATA, v);
            }
        }
        Ok(resp)
    }

    async fn watch(
        &self,
        r: Request<WatchRequest>,
    ) -> Result<Response<Stream_<WatchResponse>>, Status> {
        self.watch_starts
            .lock()
            .unwrap()
            .push(r.get_ref().start_revision);
        let script = self.b.watches.lock().unwrap().pop_front();
        let Some(script) = script else {
            return Err(Status::unavailable("no more scripted watches"));
        };
        // An error as the first item is the answer to the call itself.
        if let Some(Err((code, msg))) = script.items.first() {
            return Err(Status::new(*code, msg.clone()));
        }
        let id = self.id;
        let items = script.items.into_iter().map(move |i| {
            i.map(|mut r| {
                r.served_by = id;
                r
            })
            .map_err(|(code, msg)| Status::new(code, msg))
        });
        let s = futures::stream::iter(items);
        Ok(Response::new(if script.then_hang {
            s.chain(futures::stream::pending()).boxed()
        } else {
            s.boxed()
        }))
    }

    async fn keep_alive(
        &self,
        r: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Stream_<KeepAliveResponse>>, Status> {
        if let Some(s) = self.not_leader() {
            return Err(s);
        }
        let mut incoming = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let id = self.id;
        tokio::spawn(async move {
            while let Ok(Some(req)) = incoming.message().await {
                let resp = KeepAliveResponse {
                    seq: req.seq,
                    status: proto::KeepAliveStatus::Renewed as i32,
                    lease: Some(lease(7)),
                    leader_id: id,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx).boxed()))
    }

    async fn failover(
        &self,
        r: Request<FailoverRequest>,
    ) -> Result<Response<FailoverResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(s) = self.not_leader() {
            return Err(s);
        }
        if self.b.hang_failover {
            futures::future::pending::<()>().await;
        }
        if r.get_ref().to_region == "mars" {
            return Err(Status::invalid_argument("unknown region \"mars\""));
        }
        Ok(Response::new(FailoverResponse {
            before: Some(lease(7)),
            after: Some(lease(11)),
            checks: vec![],
            dry_run: false,
            fenced_by: "demotion-ack".into(),
            fence_ms: 3,
            total_ms: 5,
            ..Default::default()
        }))
    }

    /// Counts the call; answers not-leader or hangs as the behaviour says.
    async fn write_gate(&self) -> Result<(), Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(s) = self.not_leader() {
            return Err(s);
        }
        Ok(())
    }

    async fn failback(
        &self,
        _r: Request<FailbackRequest>,
    ) -> Result<Response<FailoverResponse>, Status> {
        self.write_gate().await?;
        if self.b.hang_failover {
            futures::future::pending::<()>().await;
        }
        Ok(Response::new(FailoverResponse {
            before: Some(lease(11)),
            after: Some(lease(15)),
            fenced_by: "demotion-ack".into(),
            run_id: 15,
            candidates: vec![proto::CandidateEligibility {
                region: "us-east".into(),
                eligible: true,
                reasons: vec!["eligible".into()],
                health: "up".into(),
            }],
            ..Default::default()
        }))
    }

    async fn set_mode(
        &self,
        r: Request<SetModeRequest>,
    ) -> Result<Response<SetModeResponse>, Status> {
        self.write_gate().await?;
        let req = r.into_inner();
        Ok(Response::new(SetModeResponse {
            lease: Some(Lease {
                service: req.service,
                mode: req.mode,
                ..lease(7)
            }),
        }))
    }

    async fn freeze(&self, r: Request<FreezeRequest>) -> Result<Response<FreezeResponse>, Status> {
        self.write_gate().await?;
        Ok(Response::new(FreezeResponse {
            frozen: r.get_ref().freeze,
        }))
    }

    async fn ack(&self, r: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.write_gate().await?;
        if r.get_ref().service != "payments" {
            return Err(Status::not_found("no such service"));
        }
        Ok(Response::new(AckResponse {}))
    }

    async fn approve(
        &self,
        r: Request<ApproveRequest>,
    ) -> Result<Response<ApproveResponse>, Status> {
        self.write_gate().await?;
        if self.b.hang_failover {
            futures::future::pending::<()>().await;
        }
        let req = r.into_inner();
        Ok(Response::new(ApproveResponse {
            workflow: Some(Workflow {
                id: req.run_id,
                state: if req.approve { "running" } else { "rejected" }.into(),
                ..Workflow::default()
            }),
        }))
    }

    async fn get_workflow(
        &self,
        r: Request<GetWorkflowRequest>,
    ) -> Result<Response<Workflow>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let id = r.get_ref().run_id;
        if id == 404 {
            return Err(Status::not_found("there is no run 404"));
        }
        Ok(Response::new(Workflow {
            id,
            service: "payments".into(),
            kind: "switchover".into(),
            state: "succeeded".into(),
            ..Workflow::default()
        }))
    }

    async fn list_workflows(
        &self,
        r: Request<ListWorkflowsRequest>,
    ) -> Result<Response<ListWorkflowsResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let req = r.into_inner();
        let n = if req.limit == 0 { 50 } else { req.limit as u64 };
        let service = if req.service.is_empty() {
            "any".to_string()
        } else {
            req.service
        };
        Ok(Response::new(ListWorkflowsResponse {
            workflows: (0..n)
                .map(|i| Workflow {
                    id: 100 - i,
                    service: service.clone(),
                    ..Workflow::default()
                })
                .collect(),
        }))
    }

    async fn plan(&self, r: Request<PlanRequest>) -> Result<Response<PlanResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(PlanResponse {
            service: r.into_inner().service,
            holder_region: "us-east".into(),
            next_action: "nothing: the holder is healthy".into(),
            ..PlanResponse::default()
        }))
    }
}

/// Adapts an async function to tonic's server traits.
struct Handler<F>(F);

impl<Req, Resp, F, Fut> tonic::server::UnaryService<Req> for Handler<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    type Response = Resp;
    type Future = Fut;
    fn call(&mut self, request: Request<Req>) -> Fut {
        (self.0)(request)
    }
}

type BoxedAnswer<T> = Pin<Box<dyn Future<Output = Result<Response<Stream_<T>>, Status>> + Send>>;

/// The Watch handler (concrete: a generic one trips the compiler's Send inference).
struct WatchSvc(Arc<Fake>);

impl tonic::server::ServerStreamingService<WatchRequest> for WatchSvc {
    type Response = WatchResponse;
    type ResponseStream = Stream_<WatchResponse>;
    type Future = BoxedAnswer<WatchResponse>;
    fn call(&mut self, request: Request<WatchRequest>) -> Self::Future {
        let f = self.0.clone();
        Box::pin(async move { f.watch(request).await })
    }
}

/// The KeepAlive handler.
struct KeepAliveSvc(Arc<Fake>);

impl tonic::server::StreamingService<KeepAliveRequest> for KeepAliveSvc {
    type Response = KeepAliveResponse;
    type ResponseStream = Stream_<KeepAliveResponse>;
    type Future = BoxedAnswer<KeepAliveResponse>;
    fn call(&mut self, request: Request<Streaming<KeepAliveRequest>>) -> Self::Future {
        let f = self.0.clone();
        Box::pin(async move { f.keep_alive(request).await })
    }
}

/// A server-side gRPC codec for one method's message types.
fn grpc<E, D>() -> tonic::server::Grpc<tonic_prost::ProstCodec<E, D>>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
}

/// Serves a unary RPC of the fake with the `Fake` method of that name.
macro_rules! unary {
    ($req:ident, $fake:ident, $method:ident) => {
        Box::pin(async move {
            let h = Handler(move |r| {
                let f = $fake.clone();
                async move { f.$method(r).await }
            });
            Ok(grpc().unary(h, $req).await)
        })
    };
}

/// A hand-routed `baton.v1.Coordinator` serving only the RPCs these tests use; any other
/// path answers UNIMPLEMENTED, so RPCs added to the proto later do not break the fake.
#[derive(Clone)]
struct Router(Arc<Fake>);

impl tonic::server::NamedService for Router {
    const NAME: &'static str = "baton.v1.Coordinator";
}

type RouteFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl<B> Service<http::Request<B>> for Router
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> RouteFuture {
        let fake = self.0.clone();
        match req.uri().path() {
            "/baton.v1.Coordinator/GetPrimary" => Box::pin(async move {
                let h = Handler(move |r| {
                    let f = fake.clone();
                    async move { f.get_primary(r).await }
                });
                Ok(grpc().unary(h, req).await)
            }),
            "/baton.v1.Coordinator/Failover" => Box::pin(async move {
                let h = Handler(move |r| {
                    let f = fake.clone();
                    async move { f.failover(r).await }
                });
                Ok(grpc().unary(h, req).await)
            }),
            "/baton.v1.Coordinator/Failback" => unary!(req, fake, failback),
            "/baton.v1.Coordinator/SetMode" => unary!(req, fake, set_mode),
            "/baton.v1.Coordinator/Freeze" => unary!(req, fake, freeze),
            "/baton.v1.Coordinator/Ack" => unary!(req, fake, ack),
            "/baton.v1.Coordinator/Approve" => unary!(req, fake, approve),
            "/baton.v1.Coordinator/GetWorkflow" => unary!(req, fake, get_workflow),
            "/baton.v1.Coordinator/ListWorkflows" => unary!(req, fake, list_workflows),
            "/baton.v1.Coordinator/Plan" => unary!(req, fake, plan),
            "/baton.v1.Coordinator/Watch" => {
                Box::pin(async move { Ok(grpc().server_streaming(WatchSvc(fake), req).await) })
            }
            "/baton.v1.Coordinator/KeepAlive" => {
                Box::pin(async move { Ok(grpc().streaming(KeepAliveSvc(fake), req).await) })
            }
            _ => Box::pin(async { Ok(Status::unimplemented("not in this fake").into_http()) }),
        }
    }
}

/// A running fake node; dropping it stops the server.
struct Node {
    addr: String,
    fake: Fake,
    _stop: oneshot::Sender<()>,
}

async fn start(id: u64, b: Behaviour) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = Fake {
        id,
        b,
        calls: Arc::default(),
        watch_starts: Arc::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let svc = Router(Arc::new(fake.clone()));
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await;
    });
    Node {
        addr,
        fake,
        _stop: stop,
    }
}

/// An address nobody listens on.
async fn dead_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a: SocketAddr = l.local_addr().unwrap();
    drop(l);
    a.to_string()
}

fn client(endpoints: Vec<String>, timeout: Duration) -> Client {
    Client::with_options(
        endpoints,
        ClientOptions {
            timeout,
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn reads_follow_the_leader_hint() {
    let leader = start(2, Behaviour::default()).await;
    let follower = start(
        1,
        Behaviour {
            not_leader_hint: Some(leader.addr.clone()),
            ..Behaviour::default()
        },
    )
    .await;
    // Only the follower is configured: the leader is learned from its answer.
    let c = client(vec![follower.addr.clone()], Duration::from_secs(5));
    let p = c
        .primary("payments", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(p.served_by, 2);
    assert_eq!(c.leader(), Some(leader.addr.clone()));
    // The next call goes straight to the leader.
    c.primary("payments", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(follower.fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader.fake.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_forwarded_answer_that_names_the_leader_is_followed_next_time() {
    let leader = start(2, Behaviour::default()).await;
    let follower = start(
        1,
        Behaviour {
            forwarded_from: Some(leader.addr.clone()),
            ..Behaviour::default()
        },
    )
    .await;
    let c = client(vec![follower.addr.clone()], Duration::from_secs(5));
    assert_eq!(
        c.primary("payments", Consistency::Linearizable)
            .await
            .unwrap()
            .served_by,
        1
    );
    assert_eq!(c.leader(), Some(leader.addr.clone()));
    assert_eq!(
        c.primary("payments", Consistency::Linearizable)
            .await
            .unwrap()
            .served_by,
        2
    );
}

#[tokio::test]
async fn unreachable_endpoints_are_skipped() {
    let node = start(3, Behaviour::default()).await;
    let c = client(
        vec![dead_addr().await, format!("http://{}", node.addr)],
        Duration::from_secs(5),
    );
    let p = c.primary("payments", Consistency::Local).await.unwrap();
    assert_eq!(p.served_by, 3);
}

#[tokio::test]
async fn a_broken_node_is_skipped_for_reads() {
    // A node whose Raft stopped answers INTERNAL to everything: reads go elsewhere.
    let broken = start(
        1,
        Behaviour {
            primary_error: Some((tonic::Code::Internal, "raft stopped".into())),
            ..Behaviour::default()
        },
    )
    .await;
    let healthy = start(2, Behaviour::default()).await;
    let c = client(
        vec![
            format!("http://{}", broken.addr),
            format!("http://{}", healthy.addr),
        ],
        Duration::from_secs(5),
    );
    let p = c.primary("payments", Consistency::Local).await.unwrap();
    assert_eq!(p.served_by, 2);
}

#[tokio::test]
async fn no_reachable_endpoint_is_unavailable_within_the_deadline() {
    let c = client(vec![dead_addr().await], Duration::from_millis(300));
    let started = std::time::Instant::now();
    match c.primary("payments", Consistency::Linearizable).await {
        Err(ClientError::Unavailable { op, .. }) => assert_eq!(op, "GetPrimary"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn writes_are_retried_after_a_not_leader_answer() {
    let leader = start(2, Behaviour::default()).await;
    let follower = start(
        1,
        Behaviour {
            not_leader_hint: Some(leader.addr.clone()),
            ..Behaviour::default()
        },
    )
    .await;
    let c = client(vec![follower.addr.clone()], Duration::from_secs(5));
    let resp = c
        .failover(FailoverRequest {
            service: "payments".into(),
            to_region: "eu-west".into(),
            reason: "test".into(),
            ..FailoverRequest::default()
        })
        .await
        .unwrap();
    assert_eq!(resp.after.map(|l| l.token), Some(11));
    assert_eq!(leader.fake.calls.load(Ordering::SeqCst), 1, "executed once");
}

#[tokio::test]
async fn a_write_without_an_answer_is_not_resent() {
    let a = start(
        1,
        Behaviour {
            hang_failover: true,
            ..Behaviour::default()
        },
    )
    .await;
    let b = start(2, Behaviour::default()).await;
    let c = client(
        vec![a.addr.clone(), b.addr.clone()],
        Duration::from_millis(300),
    );
    let err = c
        .failover(FailoverRequest {
            service: "payments".into(),
            to_region: "eu-west".into(),
            reason: "test".into(),
            ..FailoverRequest::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClientError::OutcomeUnknown { op: "Failover", .. }),
        "{err:?}"
    );
    assert_eq!(a.fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.fake.calls.load(Ordering::SeqCst), 0, "never sent twice");
}

#[tokio::test]
async fn rejections_are_returned_at_once() {
    let a = start(
        1,
        Behaviour {
            primary_error: Some((tonic::Code::NotFound, "no service \"x\"".into())),
            ..Behaviour::default()
        },
    )
    .await;
    let c = client(vec![a.addr.clone()], Duration::from_secs(5));
    let err = c.primary("x", Consistency::Linearizable).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(a.fake.calls.load(Ordering::SeqCst), 1);
    let err = c
        .failover(FailoverRequest {
            to_region: "mars".into(),
            ..FailoverRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn the_watch_resumes_on_another_node_without_gap_or_duplicate() {
    let first = Behaviour::default();
    first.watches.lock().unwrap().push_back(WatchScript {
        items: vec![
            Ok(watch_resp(10)),
            Ok(watch_resp(11)),
            Err((tonic::Code::Unavailable, "node stopping".into())),
        ],
        then_hang: false,
    });
    let second = Behaviour::default();
    second.watches.lock().unwrap().push_back(WatchScript {
        // The resumed node replays 11 (a duplicate) before the new revisions.
        items: vec![Ok(watch_resp(11)), Ok(watch_resp(12)), Ok(watch_resp(13))],
        then_hang: true,
    });
    let a = start(1, first).await;
    let b = start(2, second).await;
    let c = client(vec![a.addr.clone(), b.addr.clone()], Duration::from_secs(5));
    let mut w = c.watch(vec!["payments".into()], 0);
    let mut got = Vec::new();
    while got.len() < 4 {
        let resp = tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("watch stalled")
            .expect("watch ended")
            .expect("watch failed");
        got.push((resp.revision, resp.served_by));
    }
    assert_eq!(got, vec![(10, 1), (11, 1), (12, 2), (13, 2)]);
    assert_eq!(w.last_revision(), 13);
    assert_eq!(*a.fake.watch_starts.lock().unwrap(), vec![0]);
    assert_eq!(
        *b.fake.watch_starts.lock().unwrap(),
        vec![12],
        "resumed after 11"
    );
}

#[tokio::test]
async fn a_compacted_resume_point_is_an_error_not_a_gap() {
    let first = Behaviour::default();
    first.watches.lock().unwrap().push_back(WatchScript {
        items: vec![Ok(watch_resp(5))],
        then_hang: false,
    });
    let second = Behaviour::default();
    second.watches.lock().unwrap().push_back(WatchScript {
        items: vec![Err((
            tonic::Code::FailedPrecondition,
            "revision 6 has been compacted; the oldest revision available is 40 — restart the watch"
                .into(),
        ))],
        then_hang: false,
    });
    let a = start(1, first).await;
    let b = start(2, second).await;
    let c = client(vec![a.addr.clone(), b.addr.clone()], Duration::from_secs(5));
    let mut w = c.watch(vec![], 0).into_stream().boxed();
    assert_eq!(w.next().await.unwrap().unwrap().revision, 5);
    match w.next().await {
        Some(Err(ClientError::Compacted { requested, oldest })) => {
            assert_eq!((requested, oldest), (6, 40))
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(w.next().await.is_none(), "the error is terminal");
}

#[tokio::test]
async fn a_lease_session_finds_the_leader() {
    let leader = start(2, Behaviour::default()).await;
    let follower = start(
        1,
        Behaviour {
            not_leader_hint: Some(leader.addr.clone()),
            ..Behaviour::default()
        },
    )
    .await;
    let c = client(vec![follower.addr.clone()], Duration::from_secs(5));
    let h = c.keep_alive(
        "payments",
        "us-east",
        "agent-1",
        LeaseOptions {
            renew_interval: Some(Duration::from_millis(100)),
            ..LeaseOptions::default()
        },
    );
    let token = tokio::time::timeout(Duration::from_secs(10), h.held())
        .await
        .expect("no lease within 10s")
        .unwrap();
    assert_eq!(token, 7);
    assert!(h.is_valid());
    h.close().await;
}

#[tokio::test]
async fn cluster_status_reports_each_endpoint() {
    let dead = dead_addr().await;
    let c = client(vec![dead.clone()], Duration::from_millis(500));
    let all = c.cluster_status_all().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].endpoint, dead);
    assert!(matches!(
        all[0].result,
        Err(ClientError::Unavailable { .. })
    ));
}

#[test]
fn clients_refuse_bad_input() {
    assert!(Client::new(vec![]).is_err());
    assert!(Client::new(vec!["nohost".into()]).is_err());
    let bad_actor = Client::with_options(
        vec!["a:1".into()],
        ClientOptions {
            actor: Some("bad\nactor".into()),
            ..ClientOptions::default()
        },
    );
    assert!(matches!(bad_actor, Err(ClientError::InvalidActor { .. })));
    let c = Client::new(vec!["a:1".into(), "http://b:2".into()]).unwrap();
    assert_eq!(c.endpoints(), vec!["a:1".to_string(), "b:2".to_string()]);
    assert_eq!(c.timeout(), Duration::from_secs(5));
    assert_eq!(
        c.with_timeout(Duration::from_secs(60)).timeout(),
        Duration::from_secs(60)
    );
    assert_eq!(c.with_timeout(Duration::MAX).timeout(), MAX_TIMEOUT);
}

fn failback_request(dry_run: bool) -> FailbackRequest {
    FailbackRequest {
        service: "payments".into(),
        reason: "test".into(),
        dry_run,
        ..FailbackRequest::default()
    }
}

#[tokio::test]
async fn automation_writes_follow_the_leader_and_run_once() {
    let leader = start(2, Behaviour::default()).await;
    let follower = start(
        1,
        Behaviour {
            not_leader_hint: Some(leader.addr.clone()),
            ..Behaviour::default()
        },
    )
    .await;
    let c = client(vec![follower.addr.clone()], Duration::from_secs(5));
    let done = c.failback(failback_request(false)).await.unwrap();
    assert_eq!(done.run_id, 15);
    assert_eq!(done.candidates.len(), 1);
    let mode = c
        .set_mode("payments", LeaseMode::ReadOnly, "degrade")
        .await
        .unwrap();
    assert_eq!(
        mode.lease.map(|l| (l.mode(), l.service)),
        Some((LeaseMode::ReadOnly, "payments".to_string()))
    );
    assert!(
        c.freeze("payments", true, "maintenance")
            .await
            .unwrap()
            .frozen
    );
    assert!(!c.freeze("payments", false, "done").await.unwrap().frozen);
    c.ack("payments", "flapping understood").await.unwrap();
    let approved = c.approve(9, true, "go").await.unwrap();
    assert_eq!(
        approved.workflow.map(|w| (w.id, w.state)),
        Some((9, "running".to_string()))
    );
    let rejected = c.approve(9, false, "no").await.unwrap();
    assert_eq!(rejected.workflow.map(|w| w.state), Some("rejected".into()));
    // Every write reached the follower once (not-leader) and the leader once.
    assert_eq!(leader.fake.calls.load(Ordering::SeqCst), 7);
    assert_eq!(follower.fake.calls.load(Ordering::SeqCst), 1);
    let err = c.ack("orders", "x").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn an_unanswered_failback_or_approval_is_not_resent() {
    let a = start(
        1,
        Behaviour {
            hang_failover: true,
            ..Behaviour::default()
        },
    )
    .await;
    let b = start(2, Behaviour::default()).await;
    let c = client(
        vec![a.addr.clone(), b.addr.clone()],
        Duration::from_millis(300),
    );
    let err = c.failback(failback_request(false)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::OutcomeUnknown { op: "Failback", .. }),
        "{err:?}"
    );
    let err = c.approve(3, true, "go").await.unwrap_err();
    assert!(
        matches!(err, ClientError::OutcomeUnknown { op: "Approve", .. }),
        "{err:?}"
    );
    assert_eq!(a.fake.calls.load(Ordering::SeqCst), 2);
    assert_eq!(b.fake.calls.load(Ordering::SeqCst), 0, "never sent twice");
}

#[tokio::test]
async fn a_dry_run_failback_is_retried_like_a_read() {
    let a = start(
        1,
        Behaviour {
            hang_failover: true,
            ..Behaviour::default()
        },
    )
    .await;
    let b = start(2, Behaviour::default()).await;
    let c = Client::with_options(
        vec![a.addr.clone(), b.addr.clone()],
        ClientOptions {
            timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_millis(200),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let plan = c.failback(failback_request(true)).await.unwrap();
    assert_eq!(plan.run_id, 15);
    assert_eq!(a.fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.fake.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn workflow_and_plan_reads_skip_dead_nodes_and_carry_their_arguments() {
    let node = start(3, Behaviour::default()).await;
    let c = client(
        vec![dead_addr().await, node.addr.clone()],
        Duration::from_secs(5),
    );
    let w = c.workflow(12).await.unwrap();
    assert_eq!((w.id, w.kind.as_str()), (12, "switchover"));
    let err = c.workflow(404).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let list = c.workflows(Some("payments"), 3).await.unwrap();
    assert_eq!(
        list.workflows
            .iter()
            .map(|w| (w.id, w.service.as_str()))
            .collect::<Vec<_>>(),
        vec![(100, "payments"), (99, "payments"), (98, "payments")]
    );
    let all = c.workflows(None, 0).await.unwrap();
    assert_eq!(all.workflows.len(), 50);
    assert_eq!(all.workflows[0].service, "any");
    let plan = c.plan("payments").await.unwrap();
    assert_eq!(plan.service, "payments");
    assert_eq!(plan.holder_region, "us-east");
}
