//! Lease validity arithmetic (time is an argument: every instant is computed, nothing
//! waits) and the session task against an in-memory transport (event-driven, no sleeps).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::proto::Lease;

const TTL: Duration = Duration::from_millis(3000);

fn opts() -> LeaseOptions {
    LeaseOptions {
        renew_interval: Some(Duration::from_millis(1000)),
        ..LeaseOptions::default()
    }
}

fn answer(seq: u64, status: KeepAliveStatus, token: u64) -> KeepAliveResponse {
    KeepAliveResponse {
        seq,
        status: status as i32,
        lease: Some(Lease {
            service: "payments".into(),
            holder_region: "us-east".into(),
            token,
            ttl_ms: TTL.as_millis() as u64,
            ..Lease::default()
        }),
        leader_id: 1,
    }
}

/// 3000 ms * (1 - 0.05) - 50 ms.
const SPAN: Duration = Duration::from_millis(2800);

#[test]
fn validity_is_send_time_plus_ttl_less_drift_and_margin() {
    let t0 = Instant::now();
    assert_eq!(
        validity_deadline(t0, TTL, 0.05, Duration::from_millis(50)),
        t0 + SPAN
    );
    assert_eq!(validity_deadline(t0, TTL, 0.0, Duration::ZERO), t0 + TTL);
    // A margin larger than the span leaves no validity at all.
    assert_eq!(
        validity_deadline(
            t0,
            Duration::from_millis(40),
            0.0,
            Duration::from_millis(50)
        ),
        t0
    );
}

#[test]
fn absurd_inputs_give_no_validity_rather_than_a_panic() {
    let t0 = Instant::now();
    assert_eq!(validity_deadline(t0, TTL, f64::NAN, Duration::ZERO), t0);
    assert_eq!(validity_deadline(t0, TTL, 7.0, Duration::ZERO), t0);
    assert_eq!(
        validity_deadline(t0, TTL, -1.0, Duration::ZERO),
        t0 + TTL,
        "a negative drift counts as none, never as extra validity"
    );
    let huge = validity_deadline(t0, Duration::from_millis(u64::MAX), 0.0, Duration::ZERO);
    assert!(huge >= t0);
}

#[test]
fn validity_counts_from_the_send_not_the_answer() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    // The answer takes 400 ms: the lease is not extended by that delay.
    core.on_response(
        &answer(1, KeepAliveStatus::Renewed, 7),
        t0 + Duration::from_millis(400),
    );
    assert_eq!(
        core.status(),
        LeaseStatus::Holding {
            token: 7,
            valid_until: t0 + SPAN
        }
    );
    assert_eq!(core.deadline(), Some(t0 + SPAN));
}

#[test]
fn validity_never_moves_backwards() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    let t1 = t0 + Duration::from_millis(1000);
    core.on_send(1, t0);
    core.on_send(2, t1);
    core.on_response(&answer(2, KeepAliveStatus::Renewed, 7), t1);
    let later = t1 + SPAN;
    assert_eq!(core.deadline(), Some(later));
    // The answer to the older renewal arrives late: ignored, validity stays.
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 7), t1);
    assert_eq!(core.deadline(), Some(later));
    // A renewal answered with a shorter TTL cannot shorten what was already earned.
    core.on_send(3, t1);
    let mut short = answer(3, KeepAliveStatus::Renewed, 7);
    if let Some(l) = short.lease.as_mut() {
        l.ttl_ms = 100;
    }
    core.on_response(&short, t1);
    assert_eq!(core.deadline(), Some(later));
}

#[test]
fn an_answer_to_an_unknown_seq_is_ignored() {
    let mut core = LeaseCore::new(&opts());
    core.on_response(&answer(9, KeepAliveStatus::Renewed, 7), Instant::now());
    assert_eq!(core.status(), LeaseStatus::Pending);
}

#[test]
fn the_lease_is_lost_when_validity_runs_out_and_regained_by_a_renewal() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 7), t0);
    core.on_timer(t0 + SPAN - Duration::from_millis(1));
    assert!(matches!(core.status(), LeaseStatus::Holding { .. }));
    core.on_timer(t0 + SPAN);
    assert_eq!(core.status(), LeaseStatus::Lost);
    assert_eq!(core.deadline(), None);
    // A later renewal of the same token, acknowledged, makes it valid again from its send.
    let t1 = t0 + SPAN + Duration::from_millis(10);
    core.on_send(2, t1);
    core.on_response(&answer(2, KeepAliveStatus::Renewed, 7), t1);
    assert_eq!(
        core.status(),
        LeaseStatus::Holding {
            token: 7,
            valid_until: t1 + SPAN
        }
    );
}

#[test]
fn a_revocation_waits_for_the_holder_to_acknowledge() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 7), t0);
    core.on_send(2, t0);
    let r = core.on_response(&answer(2, KeepAliveStatus::Revoke, 7), t0);
    assert_eq!(r, Reaction::None);
    assert_eq!(
        core.status(),
        LeaseStatus::Revoking {
            token: 7,
            valid_until: t0 + SPAN
        }
    );
    assert!(!core.demoted());
    core.ack_demotion();
    assert!(core.demoted());
    assert_eq!(core.status(), LeaseStatus::Lost);
    // Once demoted, a stray renewal of the same token does not make it valid again.
    core.on_send(3, t0);
    core.on_response(&answer(3, KeepAliveStatus::Renewed, 7), t0);
    assert_eq!(core.status(), LeaseStatus::Lost);
    // A new grant (new token) does.
    core.on_send(4, t0);
    core.on_response(&answer(4, KeepAliveStatus::Renewed, 12), t0);
    assert!(matches!(
        core.status(),
        LeaseStatus::Holding { token: 12, .. }
    ));
    assert!(!core.demoted());
}

#[test]
fn auto_ack_demotes_at_once() {
    let mut core = LeaseCore::new(&LeaseOptions {
        auto_ack_demotion: true,
        ..opts()
    });
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 7), t0);
    core.on_send(2, t0);
    let r = core.on_response(&answer(2, KeepAliveStatus::Revoke, 7), t0);
    assert_eq!(r, Reaction::SendDemoted);
    assert_eq!(core.status(), LeaseStatus::Lost);
    assert!(core.demoted());
}

#[test]
fn an_agent_that_never_held_the_lease_acknowledges_a_revocation_at_once() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    let r = core.on_response(&answer(1, KeepAliveStatus::Revoke, 7), t0);
    assert_eq!(r, Reaction::SendDemoted);
    assert_eq!(core.status(), LeaseStatus::Lost);
    // The revocation repeats until it completes: acknowledged once only.
    core.on_send(2, t0);
    let r = core.on_response(&answer(2, KeepAliveStatus::Revoke, 7), t0);
    assert_eq!(r, Reaction::None);
}

#[test]
fn not_holder_clears_the_token() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 7), t0);
    core.on_send(2, t0);
    core.on_response(&answer(2, KeepAliveStatus::NotHolder, 9), t0);
    assert_eq!(core.status(), LeaseStatus::NotHolder);
    assert_eq!(core.token(), 0);
    assert_eq!(core.deadline(), None);
}

#[test]
fn the_renew_interval_defaults_to_a_third_of_the_ttl() {
    let mut core = LeaseCore::new(&LeaseOptions::default());
    assert_eq!(core.renew_interval(None), Duration::from_secs(1));
    core.ttl = Some(Duration::from_millis(900));
    assert_eq!(core.renew_interval(None), Duration::from_millis(300));
    assert_eq!(
        core.renew_interval(Some(Duration::from_millis(5))),
        Duration::from_millis(10),
        "never a busy loop"
    );
    assert_eq!(
        core.renew_interval(Some(Duration::MAX)),
        Duration::from_secs(3600)
    );
}

// ---- the session task, with an in-memory transport ----
//
// Real time with a short TTL: the assertions are bounds (a timer never fires early; a
// generous slack above), so a loaded machine cannot make them flaky.

/// TTL of the session tests: 600 ms, so SPAN_S = 600 * 0.95 - 50 = 520 ms.
const TTL_S: Duration = Duration::from_millis(600);
const SPAN_S: Duration = Duration::from_millis(520);
const SLACK: Duration = Duration::from_millis(400);

fn short_opts() -> LeaseOptions {
    LeaseOptions {
        renew_interval: Some(Duration::from_millis(200)),
        ..LeaseOptions::default()
    }
}

fn short_answer(seq: u64, status: KeepAliveStatus, token: u64) -> KeepAliveResponse {
    let mut a = answer(seq, status, token);
    if let Some(l) = a.lease.as_mut() {
        l.ttl_ms = TTL_S.as_millis() as u64;
    }
    a
}

/// The server side of one fake session.
struct Peer {
    requests: mpsc::Receiver<KeepAliveRequest>,
    answers: mpsc::Sender<Result<KeepAliveResponse, Status>>,
}

impl Peer {
    async fn next(&mut self) -> KeepAliveRequest {
        match tokio::time::timeout(Duration::from_secs(10), self.requests.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => panic!("the session closed its stream"),
            Err(_) => panic!("no request within 10s"),
        }
    }

    async fn reply(&self, resp: KeepAliveResponse) {
        let _ = self.answers.send(Ok(resp)).await;
    }
}

/// A prepared session (with the sender its first message goes to), or a refusal.
type Prepared = Result<(mpsc::Sender<KeepAliveRequest>, Session), Broken>;

/// Hands out prepared sessions; when none is left, opening never completes (the
/// cluster is unreachable).
struct FakeTransport {
    sessions: Mutex<VecDeque<Prepared>>,
}

fn fake(n: usize) -> (Arc<FakeTransport>, Vec<Peer>) {
    let mut sessions = VecDeque::new();
    let mut peers = Vec::new();
    for i in 0..n {
        let (req_tx, req_rx) = mpsc::channel(64);
        let (ans_tx, ans_rx) = mpsc::channel(64);
        sessions.push_back(Ok((
            req_tx.clone(),
            Session {
                idx: i,
                addr: format!("fake-{i}"),
                tx: req_tx,
                stream: ReceiverStream::new(ans_rx).boxed(),
                first_seq: 0,
                sent_at: Instant::now(),
            },
        )));
        peers.push(Peer {
            requests: req_rx,
            answers: ans_tx,
        });
    }
    (
        Arc::new(FakeTransport {
            sessions: Mutex::new(sessions),
        }),
        peers,
    )
}

impl Transport for FakeTransport {
    fn open(&self, first: KeepAliveRequest) -> BoxFuture<'static, Result<Session, Broken>> {
        let next = self.sessions.lock().unwrap().pop_front();
        match next {
            Some(Ok((tx, mut session))) => {
                session.first_seq = first.seq;
                session.sent_at = Instant::now();
                let _ = tx.try_send(first);
                async move { Ok(session) }.boxed()
            }
            Some(Err(e)) => async move { Err(e) }.boxed(),
            None => futures::future::pending().boxed(),
        }
    }

    fn broken(&self, _idx: usize, _addr: &str, status: Option<Status>) -> Broken {
        match status {
            Some(s) if s.code() == Code::NotFound => Broken::Fatal(ClientError::Rpc {
                endpoint: "fake".into(),
                status: s,
            }),
            _ => Broken::Retry { now: true },
        }
    }
}

fn ident() -> Ident {
    Ident {
        service: "payments".into(),
        region: "us-east".into(),
        agent_id: "agent-1".into(),
    }
}

/// Waits (at most 10 s) for a status matching `f`.
async fn wait(h: &LeaseHandle, f: impl FnMut(&LeaseStatus) -> bool) -> LeaseStatus {
    let mut rx = h.status();
    let reached = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(f))
        .await
        .map(|r| r.map(|s| *s));
    match reached {
        Ok(Ok(s)) => s,
        other => panic!("status not reached: {other:?}"),
    }
}

fn until(s: LeaseStatus) -> Instant {
    match s {
        LeaseStatus::Holding { valid_until, .. } | LeaseStatus::Revoking { valid_until, .. } => {
            valid_until
        }
        other => panic!("no validity in {other:?}"),
    }
}

#[tokio::test]
async fn the_holder_fences_itself_when_the_cluster_goes_silent() {
    let (t, mut peers) = fake(1);
    let before = Instant::now();
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    let first = peers[0].next().await;
    let after = Instant::now();
    assert_eq!(first.seq, 1);
    assert_eq!(
        (first.service.as_str(), first.region.as_str(), first.token),
        ("payments", "us-east", 0)
    );
    peers[0]
        .reply(short_answer(first.seq, KeepAliveStatus::Renewed, 7))
        .await;
    let s = wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await;
    let valid_until = until(s);
    assert!(
        valid_until >= before + SPAN_S && valid_until <= after + SPAN_S,
        "valid_until = send time + ttl * (1 - drift) - margin"
    );
    assert_eq!(h.token(), Some(7));
    assert_eq!(h.valid_until(), Some(valid_until));
    // From now on nothing is answered.
    tokio::time::timeout(Duration::from_secs(10), h.lost())
        .await
        .expect("the lease was never reported lost");
    let lost_at = Instant::now();
    assert!(lost_at >= valid_until, "never lost before valid_until");
    assert!(
        lost_at <= valid_until + SLACK,
        "lost by the timer at valid_until"
    );
    assert_eq!(*h.status().borrow(), LeaseStatus::Lost);
    assert!(!h.is_valid());
    assert_eq!(h.valid_until(), None);
}

#[tokio::test]
async fn renewals_extend_validity_from_each_send() {
    let (t, mut peers) = fake(1);
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    let mut last: Option<Instant> = None;
    for n in 0..4u64 {
        let r = peers[0].next().await;
        assert_eq!(r.seq, n + 1);
        assert_eq!(r.token, if n == 0 { 0 } else { 7 });
        peers[0]
            .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
            .await;
        let s = wait(&h, |s| match (s, last) {
            (LeaseStatus::Holding { valid_until, .. }, Some(l)) => *valid_until > l,
            (LeaseStatus::Holding { .. }, None) => true,
            _ => false,
        })
        .await;
        let v = until(s);
        if let Some(l) = last {
            assert!(
                v - l >= Duration::from_millis(200),
                "renewals are an interval apart"
            );
        }
        last = Some(v);
    }
    h.close().await;
}

#[tokio::test]
async fn acknowledging_a_demotion_tells_the_cluster() {
    let (t, mut peers) = fake(1);
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
        .await;
    wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await;
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Revoke, 7))
        .await;
    let s = wait(&h, |s| !matches!(s, LeaseStatus::Holding { .. })).await;
    assert!(
        matches!(s, LeaseStatus::Revoking { token: 7, .. }),
        "revoking, not lost, until acknowledged: {s:?}"
    );
    assert!(
        !h.is_valid(),
        "a revoking lease allows no new primary action"
    );
    assert_eq!(h.token(), Some(7));
    h.ack_demotion();
    let r = loop {
        let r = peers[0].next().await;
        if r.demoted {
            break r;
        }
    };
    assert_eq!(r.token, 7);
    h.lost().await;
    assert_eq!(*h.status().borrow(), LeaseStatus::Lost);
}

#[tokio::test]
async fn auto_ack_sends_the_demotion_without_the_holder() {
    let (t, mut peers) = fake(1);
    let h = LeaseHandle::with_transport(
        t,
        ident(),
        LeaseOptions {
            auto_ack_demotion: true,
            ..short_opts()
        },
    );
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
        .await;
    wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await;
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Revoke, 7))
        .await;
    h.lost().await;
    let r = peers[0].next().await;
    assert!(r.demoted);
}

#[tokio::test]
async fn a_broken_stream_is_replaced_and_validity_carries_over() {
    let (t, mut peers) = fake(2);
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
        .await;
    let first = until(wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await);
    // The leader steps down: its stream ends with a not-leader error.
    let _ = peers[0]
        .answers
        .send(Err(Status::unavailable("node 1 is not the leader")))
        .await;
    let r = peers[1].next().await;
    assert_eq!(r.token, 7, "the new session names the token held");
    assert_eq!(h.valid_until(), Some(first), "validity survives the switch");
    peers[1]
        .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
        .await;
    let second = until(
        wait(
            &h,
            |s| matches!(s, LeaseStatus::Holding { valid_until, .. } if *valid_until > first),
        )
        .await,
    );
    assert!(second > first);
    h.close().await;
}

#[tokio::test]
async fn a_refused_session_ends_with_the_reason() {
    let (t, _) = fake(0);
    t.sessions
        .lock()
        .unwrap()
        .push_back(Err(Broken::Fatal(ClientError::Rpc {
            endpoint: "fake".into(),
            status: Status::not_found("service \"nope\" does not exist"),
        })));
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    match tokio::time::timeout(Duration::from_secs(10), h.held()).await {
        Ok(Err(ClientError::Rpc { status, .. })) => assert_eq!(status.code(), Code::NotFound),
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
    h.lost().await;
}

#[tokio::test]
async fn close_reports_the_lease_lost() {
    let (t, mut peers) = fake(1);
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
        .await;
    wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await;
    let rx = h.status();
    h.close().await;
    assert_eq!(*rx.borrow(), LeaseStatus::Lost);
}

#[tokio::test]
async fn dropping_the_handle_stops_renewing_and_reports_lost() {
    let (t, mut peers) = fake(1);
    let h = LeaseHandle::with_transport(t, ident(), short_opts());
    let r = peers[0].next().await;
    peers[0]
        .reply(short_answer(r.seq, KeepAliveStatus::Renewed, 7))
        .await;
    wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await;
    let mut rx = h.status();
    drop(h);
    let last = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| *s == LeaseStatus::Lost),
    )
    .await
    .map(|r| r.map(|s| *s));
    assert!(matches!(last, Ok(Ok(LeaseStatus::Lost))), "{last:?}");
    // The stream to the node is closed: no more renewals.
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_secs(10), peers[0].requests.recv()).await
    {}
}

#[tokio::test]
async fn a_short_ttl_learned_from_the_first_answer_brings_the_next_renewal_forward() {
    // Issue 7: with the first interval at its default (1 s) and a TTL under ~1.1 s, every
    // session start lapsed once before its second renewal. TTL 900 ms: validity 805 ms after
    // the send; the second renewal must come at TTL/3 = 300 ms, not at 1 s.
    let (t, mut peers) = fake(1);
    let opts = LeaseOptions::default();
    let h = LeaseHandle::with_transport(t, ident(), opts);
    let first = peers[0].next().await;
    let mut a = answer(first.seq, KeepAliveStatus::Renewed, 7);
    if let Some(l) = a.lease.as_mut() {
        l.ttl_ms = 900;
    }
    peers[0].reply(a).await;
    wait(&h, |s| matches!(s, LeaseStatus::Holding { .. })).await;
    let mut lapsed = h.status();
    let second = peers[0].next().await;
    assert_eq!(second.token, 7);
    assert!(
        !matches!(*lapsed.borrow_and_update(), LeaseStatus::Lost),
        "the lease lapsed before the second renewal was sent"
    );
    h.close().await;
}

#[test]
fn not_found_does_not_end_a_session_but_refusals_do() {
    // A service created just before its agents start may not have reached the node yet.
    assert!(!ends_session(Code::NotFound));
    assert!(!ends_session(Code::Unavailable));
    assert!(ends_session(Code::InvalidArgument));
    assert!(ends_session(Code::PermissionDenied));
    assert!(ends_session(Code::Unauthenticated));
}

#[test]
fn a_pushed_revocation_starts_the_demotion_and_keeps_renewals_pending() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 7), t0);
    core.on_send(2, t0 + Duration::from_millis(100));
    // Pushed (seq 0) before renewal 2 is answered: the holder starts demoting now...
    let r = core.on_response(&answer(0, KeepAliveStatus::Revoke, 7), t0);
    assert_eq!(r, Reaction::None);
    assert_eq!(
        core.status(),
        LeaseStatus::Revoking {
            token: 7,
            valid_until: t0 + SPAN
        }
    );
    // ...and the push did not consume renewal 2's send time.
    assert_eq!(
        core.oldest_unanswered(),
        Some(t0 + Duration::from_millis(100))
    );
}

#[test]
fn a_pushed_revocation_of_an_older_grant_is_stale() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::Renewed, 12), t0);
    // Token 7's revocation, pushed late (after the answer that told of grant 12).
    let r = core.on_response(&answer(0, KeepAliveStatus::Revoke, 7), t0);
    assert_eq!(r, Reaction::None);
    assert!(matches!(
        core.status(),
        LeaseStatus::Holding { token: 12, .. }
    ));
    assert!(!core.demoted());
}

#[test]
fn a_pushed_grant_asks_for_a_renewal_and_gives_no_validity_by_itself() {
    let mut core = LeaseCore::new(&opts());
    let t0 = Instant::now();
    core.on_send(1, t0);
    core.on_response(&answer(1, KeepAliveStatus::NotHolder, 0), t0);
    // The push names the new grant; validity needs a renewal of its own.
    let r = core.on_response(&answer(0, KeepAliveStatus::Unspecified, 9), t0);
    assert_eq!(r, Reaction::RenewNow);
    assert_eq!(core.status(), LeaseStatus::NotHolder);
    core.on_send(2, t0 + Duration::from_millis(5));
    core.on_response(&answer(2, KeepAliveStatus::Renewed, 9), t0);
    assert_eq!(
        core.status(),
        LeaseStatus::Holding {
            token: 9,
            valid_until: t0 + Duration::from_millis(5) + SPAN
        }
    );
    // A repeated push of the grant it already holds asks for nothing.
    let r = core.on_response(&answer(0, KeepAliveStatus::Unspecified, 9), t0);
    assert_eq!(r, Reaction::None);
}
