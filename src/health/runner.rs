//! The per-node probe runner: runs every health check at its interval, feeds the streak
//! tracker, and hands verdict changes ([`Observation`]s) to the caller, who commits them
//! through Raft.
//!
//! One task per check. When the set of checks changes, only the checks that were added,
//! removed or changed are restarted; the others keep their timing and their streaks. Probes
//! of one check never overlap: the next tick waits for the running probe
//! (`MissedTickBehavior::Delay`), and ticks are scheduled from the interval, not from the end
//! of the previous probe, so the probe time does not accumulate as drift.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::probe::{
    check_timeout, timeout_detail, validate_check, NetProber, ProbeOutcome, Prober,
};
use super::streak::{Observation, StreakTracker};
use crate::state::HealthCheck;

/// The checks a node runs: (service, region, check). A later duplicate of a (service,
/// region) replaces an earlier one.
pub type CheckSet = Vec<(String, String, HealthCheck)>;

/// This node's current verdict per (service, region): the last observation it emitted (or
/// was seeded with). For reconciliation: whenever the replicated observation of this node
/// differs from this, the caller should commit this (again).
pub type Verdicts = BTreeMap<(String, String), Observation>;

/// Capacity of the channel from the check tasks to the runner's loop.
const RESULTS_CAPACITY: usize = 256;

/// Runs this node's health checks. Build it, optionally [`seed`](Self::seed) it from the
/// replicated observations, then [`spawn`](Self::spawn) it.
pub struct ProbeRunner {
    tracker: StreakTracker,
    prober: Arc<dyn Prober>,
    verdicts: watch::Sender<Verdicts>,
}

impl ProbeRunner {
    /// A runner for node `vantage_node` (its Raft id) in `vantage_region`, probing over the
    /// network.
    pub fn new(vantage_node: u64, vantage_region: impl Into<String>) -> Self {
        let vantage_region = vantage_region.into();
        Self {
            prober: Arc::new(NetProber {
                vantage: Some(format!("node-{vantage_node}@{vantage_region}")),
            }),
            tracker: StreakTracker::new(vantage_node, vantage_region),
            verdicts: watch::Sender::new(Verdicts::new()),
        }
    }

    /// Replaces the prober (tests script results with it).
    pub fn with_prober(mut self, prober: Arc<dyn Prober>) -> Self {
        self.prober = prober;
        self
    }

    /// Starts (service, region) from the verdict already committed for this node, so the
    /// first matching streak is not committed again.
    pub fn seed(&mut self, service: &str, region: &str, healthy: bool, detail: &str) {
        self.tracker.seed(service, region, healthy, detail);
        self.publish_verdicts();
    }

    /// This node's current verdicts, updated as they change.
    pub fn verdicts(&self) -> watch::Receiver<Verdicts> {
        self.verdicts.subscribe()
    }

    /// Spawns [`run`](Self::run) on the current tokio runtime.
    pub fn spawn(
        self,
        checks: watch::Receiver<CheckSet>,
        out: mpsc::Sender<Observation>,
        shutdown: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        tokio::spawn(self.run(checks, out, shutdown))
    }

    /// Runs the checks in `checks` (following its changes) and sends each verdict change on
    /// `out`, until `shutdown` turns true (or its sender is dropped), or `out` is closed.
    ///
    /// A check whose target cannot be probed (see [`validate_check`]) is not run and
    /// produces no observation: a configuration mistake must not look like an outage and
    /// fail a healthy region over. It is logged at warn level; the API should refuse such
    /// checks in the first place.
    pub async fn run(
        mut self,
        mut checks: watch::Receiver<CheckSet>,
        out: mpsc::Sender<Observation>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (results_tx, mut results_rx) = mpsc::channel::<ProbeResult>(RESULTS_CAPACITY);
        let mut tasks: BTreeMap<(String, String), CheckTask> = BTreeMap::new();
        let mut next_generation: u64 = 0;
        let mut checks_open = true;

        if *shutdown.borrow_and_update() {
            return;
        }
        let initial = checks.borrow_and_update().clone();
        self.reconcile(&initial, &mut tasks, &mut next_generation, &results_tx);

        loop {
            tokio::select! {
                // Shutdown first: once asked to stop, don't start another round of work.
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow_and_update() {
                        break;
                    }
                }
                changed = checks.changed(), if checks_open => {
                    match changed {
                        Ok(()) => {
                            let set = checks.borrow_and_update().clone();
                            self.reconcile(&set, &mut tasks, &mut next_generation, &results_tx);
                        }
                        // The owner of the check set is gone: keep running the last set
                        // until shutdown rather than silently stopping all probes.
                        Err(_) => checks_open = false,
                    }
                }
                Some(result) = results_rx.recv() => {
                    let Some(task) = tasks.get(&result.key) else { continue };
                    // A result of a task that was replaced or stopped meanwhile.
                    if task.generation != result.generation {
                        continue;
                    }
                    let (service, region) = &result.key;
                    let Some(observation) = self.tracker.record(
                        service,
                        region,
                        task.check.threshold,
                        result.outcome.ok,
                        &result.outcome.detail,
                    ) else {
                        continue;
                    };
                    tracing::info!(
                        service = %observation.service,
                        region = %observation.region,
                        healthy = observation.healthy,
                        detail = %observation.detail,
                        "health verdict changed from this vantage"
                    );
                    self.publish_verdicts();
                    tokio::select! {
                        biased;
                        _ = shutdown.changed() => break,
                        sent = out.send(observation) => {
                            if sent.is_err() {
                                tracing::debug!("observation receiver closed; probe runner stops");
                                break;
                            }
                        }
                    }
                }
            }
        }
        for (_, task) in tasks {
            task.handle.abort();
        }
    }

    /// Brings the running tasks in line with `set`: starts new checks, restarts changed
    /// ones, stops removed ones.
    fn reconcile(
        &mut self,
        set: &CheckSet,
        tasks: &mut BTreeMap<(String, String), CheckTask>,
        next_generation: &mut u64,
        results: &mpsc::Sender<ProbeResult>,
    ) {
        let mut wanted: BTreeMap<(String, String), &HealthCheck> = BTreeMap::new();
        for (service, region, check) in set {
            wanted.insert((service.clone(), region.clone()), check);
        }

        let stale: Vec<(String, String)> = tasks
            .iter()
            .filter(|(key, task)| wanted.get(*key).is_none_or(|c| **c != task.check))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(task) = tasks.remove(&key) {
                task.handle.abort();
            }
            if wanted.contains_key(&key) {
                // Changed: results of the old check must not count toward the new one.
                self.tracker.reset_run(&key.0, &key.1);
            } else {
                self.tracker.forget(&key.0, &key.1);
            }
        }

        for (key, check) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            if let Err(why) = validate_check(check) {
                tracing::warn!(
                    service = %key.0,
                    region = %key.1,
                    "health check not run: {why}"
                );
                // A previous verdict about a check that can no longer run is meaningless.
                self.tracker.forget(&key.0, &key.1);
                continue;
            }
            *next_generation += 1;
            let generation = *next_generation;
            let handle = tokio::spawn(probe_loop(
                key.clone(),
                generation,
                check.clone(),
                self.prober.clone(),
                results.clone(),
            ));
            tasks.insert(
                key,
                CheckTask {
                    check: check.clone(),
                    generation,
                    handle,
                },
            );
        }
        self.publish_verdicts();
    }

    fn publish_verdicts(&self) {
        let current: Verdicts = self
            .tracker
            .current()
            .map(|o| ((o.service.clone(), o.region.clone()), o.clone()))
            .collect();
        self.verdicts.send_if_modified(|v| {
            if *v == current {
                false
            } else {
                *v = current;
                true
            }
        });
    }
}

struct CheckTask {
    check: HealthCheck,
    /// Tells this task's results from those of a task it replaced.
    generation: u64,
    handle: JoinHandle<()>,
}

struct ProbeResult {
    key: (String, String),
    generation: u64,
    outcome: ProbeOutcome,
}

/// Probes one check at its interval until aborted or the runner is gone.
async fn probe_loop(
    key: (String, String),
    generation: u64,
    check: HealthCheck,
    prober: Arc<dyn Prober>,
    results: mpsc::Sender<ProbeResult>,
) {
    let timeout = check_timeout(&check);
    let mut ticker = tokio::time::interval(Duration::from_millis(check.interval_ms.max(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = tokio::time::Instant::now();
        // The prober should honour the timeout itself; this bounds a prober that doesn't.
        let outcome = match tokio::time::timeout(timeout, prober.probe(&check)).await {
            Ok(outcome) => outcome,
            Err(_) => ProbeOutcome::failure(started.elapsed(), timeout_detail(timeout)),
        };
        let result = ProbeResult {
            key: key.clone(),
            generation,
            outcome,
        };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The runner's tests drive every probe result by hand: the scripted prober answers a
    //! probe only when the test queues an answer, so the order of results (and of the
    //! observations they cause) is deterministic without sleeps. The one test about elapsed
    //! time runs on paused time.

    use super::*;

    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use tokio::time::Instant;

    /// A prober whose answers the test queues per target; counts the probes started.
    #[derive(Default)]
    struct Scripted {
        queues: Mutex<BTreeMap<String, Queue>>,
        /// Targets answered at once with a fixed result after `delay` (no queue).
        auto: Mutex<BTreeMap<String, bool>>,
        delay: Mutex<Duration>,
        started: watch::Sender<BTreeMap<String, usize>>,
        started_at: Mutex<Vec<(String, Instant)>>,
    }

    #[derive(Clone)]
    struct Queue {
        tx: mpsc::UnboundedSender<bool>,
        rx: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<bool>>>,
    }

    impl Scripted {
        fn queue(&self, target: &str) -> Queue {
            self.queues
                .lock()
                .unwrap()
                .entry(target.to_string())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    Queue {
                        tx,
                        rx: Arc::new(tokio::sync::Mutex::new(rx)),
                    }
                })
                .clone()
        }

        /// Queues the next answers for `target`.
        fn push(&self, target: &str, results: &[bool]) {
            let q = self.queue(target);
            for &ok in results {
                q.tx.send(ok).unwrap();
            }
        }

        fn started(&self, target: &str) -> usize {
            self.started.borrow().get(target).copied().unwrap_or(0)
        }

        /// Waits until `n` probes of `target` have started. The runner starts a check's
        /// next probe only after it handed over the previous result, so this is also a
        /// barrier: results `1..n` are in the runner's queue.
        async fn wait_started(&self, target: &str, n: usize) {
            let mut rx = self.started.subscribe();
            rx.wait_for(|m| m.get(target).copied().unwrap_or(0) >= n)
                .await
                .unwrap();
        }
    }

    impl Prober for Arc<Scripted> {
        fn probe(&self, check: &HealthCheck) -> BoxFuture<'static, ProbeOutcome> {
            let me = self.clone();
            let target = check.target.clone();
            Box::pin(async move {
                me.started_at
                    .lock()
                    .unwrap()
                    .push((target.clone(), Instant::now()));
                me.started
                    .send_modify(|m| *m.entry(target.clone()).or_default() += 1);
                let auto = me.auto.lock().unwrap().get(&target).copied();
                let ok = match auto {
                    Some(ok) => {
                        let delay = *me.delay.lock().unwrap();
                        tokio::time::sleep(delay).await;
                        ok
                    }
                    None => {
                        let q = me.queue(&target);
                        let mut rx = q.rx.lock().await;
                        match rx.recv().await {
                            Some(ok) => ok,
                            None => std::future::pending().await,
                        }
                    }
                };
                if ok {
                    ProbeOutcome::success(Duration::ZERO, "HTTP 200")
                } else {
                    ProbeOutcome::failure(Duration::ZERO, "HTTP 503")
                }
            })
        }
    }

    /// A check that probes every millisecond; its long timeout leaves the pace of results
    /// to the test.
    fn check(target: &str, threshold: u32) -> HealthCheck {
        HealthCheck {
            kind: "tcp".into(),
            target: target.into(),
            interval_ms: 1,
            timeout_ms: 60_000,
            threshold,
        }
    }

    fn entry(service: &str, region: &str, check: HealthCheck) -> (String, String, HealthCheck) {
        (service.to_string(), region.to_string(), check)
    }

    struct Harness {
        script: Arc<Scripted>,
        checks: watch::Sender<CheckSet>,
        shutdown: watch::Sender<bool>,
        out: mpsc::Receiver<Observation>,
        verdicts: watch::Receiver<Verdicts>,
        handle: JoinHandle<()>,
    }

    impl Harness {
        async fn stop(self) -> mpsc::Receiver<Observation> {
            self.shutdown.send(true).unwrap();
            self.handle.await.unwrap();
            self.out
        }
    }

    fn start_with(runner: ProbeRunner, script: Arc<Scripted>, set: CheckSet) -> Harness {
        let runner = runner.with_prober(Arc::new(script.clone()));
        let verdicts = runner.verdicts();
        let (checks, checks_rx) = watch::channel(set);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (out_tx, out) = mpsc::channel(16);
        let handle = runner.spawn(checks_rx, out_tx, shutdown_rx);
        Harness {
            script,
            checks,
            shutdown,
            out,
            verdicts,
            handle,
        }
    }

    fn start(set: CheckSet) -> Harness {
        start_with(
            ProbeRunner::new(3, "eu-west"),
            Arc::new(Scripted::default()),
            set,
        )
    }

    #[tokio::test]
    async fn emits_only_verdict_changes() {
        let mut h = start(vec![entry("payments", "us-east", check("a:1", 3))]);

        h.script.push("a:1", &[true, true, true]);
        let first = h.out.recv().await.unwrap();
        assert_eq!(
            first,
            Observation {
                service: "payments".into(),
                region: "us-east".into(),
                vantage_region: "eu-west".into(),
                vantage_node: 3,
                healthy: true,
                detail: "HTTP 200 (3 successes in a row)".into(),
            }
        );

        // Observations leave in result order: had any of the results before the third
        // failure in a row emitted something, it would be received first.
        h.script.push(
            "a:1",
            &[
                true, true, true, true, false, false, true, false, false, false,
            ],
        );
        let down = h.out.recv().await.unwrap();
        assert!(!down.healthy);
        assert_eq!(down.detail, "HTTP 503 (3 failures in a row)");
        let key = ("payments".to_string(), "us-east".to_string());
        assert_eq!(h.verdicts.borrow()[&key], down);

        h.script
            .push("a:1", &[false, false, true, true, false, true, true, true]);
        let up = h.out.recv().await.unwrap();
        assert!(up.healthy);
        assert_eq!(up.detail, "HTTP 200 (3 successes in a row)");

        // Everything queued has been processed (the last result caused `up`): nothing else.
        let mut out = h.stop().await;
        assert!(out.try_recv().is_err());
    }

    #[tokio::test]
    async fn probe_timeout_is_a_failure() {
        // Nothing is ever queued: the prober hangs and the runner's timeout answers.
        let mut slow = check("slow:1", 2);
        slow.timeout_ms = 30;
        let mut h = start(vec![entry("s", "r", slow)]);
        let o = h.out.recv().await.unwrap();
        assert!(!o.healthy);
        assert_eq!(o.detail, "timeout after 30ms (2 failures in a row)");
        h.stop().await;
    }

    // Paused time: the clock moves only when every task waits, so the span is exact (with
    // real time a loaded machine stretched it past any bound; seen under CI load).
    #[tokio::test(start_paused = true)]
    async fn probe_time_does_not_accumulate_as_drift() {
        // Each probe takes 18 ms of a 20 ms interval. Ticks stay on the 20 ms grid, so 20
        // intervals take 400 ms; if the probe time were added to each interval they would
        // take 760 ms.
        let script = Arc::new(Scripted::default());
        script.auto.lock().unwrap().insert("a:1".into(), true);
        *script.delay.lock().unwrap() = Duration::from_millis(18);
        let mut c = check("a:1", 1);
        c.interval_ms = 20;
        let h = start_with(ProbeRunner::new(1, "r"), script, vec![entry("s", "r", c)]);
        h.script.wait_started("a:1", 21).await;
        let at: Vec<Instant> = h
            .script
            .started_at
            .lock()
            .unwrap()
            .iter()
            .map(|(_, at)| *at)
            .collect();
        let span = at[20].duration_since(at[0]);
        assert_eq!(span, Duration::from_millis(400), "drift: {span:?}");
        h.stop().await;
    }

    #[tokio::test]
    async fn changing_the_set_restarts_only_what_changed() {
        let mut h = start(vec![
            entry("s", "keep", check("k:1", 3)),
            entry("s", "change", check("c:1", 3)),
            entry("s", "drop", check("d:1", 1)),
        ]);
        h.script.push("k:1", &[true; 3]);
        h.script.push("c:1", &[true; 3]);
        h.script.push("d:1", &[true]);
        let mut first = Vec::new();
        for _ in 0..3 {
            first.push(h.out.recv().await.unwrap());
        }
        first.sort_by(|a, b| a.region.cmp(&b.region));
        assert_eq!(
            first
                .iter()
                .map(|o| (o.region.as_str(), o.healthy))
                .collect::<Vec<_>>(),
            vec![("change", true), ("drop", true), ("keep", true)]
        );

        // Two failures each for "keep" and "change", handed over before the set changes.
        h.script.push("k:1", &[false, false]);
        h.script.push("c:1", &[false, false]);
        h.script.wait_started("k:1", 6).await;
        h.script.wait_started("c:1", 6).await;

        h.checks
            .send(vec![
                entry("s", "keep", check("k:1", 3)),
                entry("s", "change", check("c:2", 3)),
                entry("s", "new", check("n:1", 1)),
            ])
            .unwrap();
        // The new task of "change" probing means the set change was applied.
        h.script.wait_started("c:2", 1).await;

        // One failure of the new "change" check, handed over before the next "keep" result.
        h.script.push("c:2", &[false]);
        h.script.wait_started("c:2", 2).await;
        h.script.push("k:1", &[false]);
        // "keep" kept its streak (2 + 1 failures); "change" started over (only 1 of 3), or
        // its observation would have come first.
        let o = h.out.recv().await.unwrap();
        assert_eq!((o.region.as_str(), o.healthy), ("keep", false));
        assert_eq!(o.detail, "HTTP 503 (3 failures in a row)");

        h.script.push("c:2", &[false, false]);
        let o = h.out.recv().await.unwrap();
        assert_eq!((o.region.as_str(), o.healthy), ("change", false));
        assert_eq!(o.detail, "HTTP 503 (3 failures in a row)");

        h.script.push("n:1", &[true]);
        let o = h.out.recv().await.unwrap();
        assert_eq!((o.region.as_str(), o.healthy), ("new", true));

        // The removed check's verdict is gone, and it was never probed again.
        let regions: Vec<String> = h.verdicts.borrow().keys().map(|k| k.1.clone()).collect();
        assert_eq!(regions, vec!["change", "keep", "new"]);
        assert_eq!(h.script.started("d:1"), 2);
        assert_eq!(h.script.started("c:1"), 6);
        let mut out = h.stop().await;
        assert!(out.try_recv().is_err());
    }

    #[tokio::test]
    async fn invalid_checks_are_not_run() {
        let mut bad = check("https://x/", 1);
        bad.kind = "http".into();
        let mut h = start(vec![
            entry("s", "bad", bad),
            entry("s", "good", check("g:1", 2)),
        ]);
        h.script.push("g:1", &[true, true]);
        // Both tasks would have started together; the good one has probed twice by now.
        let o = h.out.recv().await.unwrap();
        assert_eq!(o.region, "good");
        assert_eq!(h.script.started("https://x/"), 0);
        let mut out = h.stop().await;
        assert!(out.try_recv().is_err());
    }

    #[tokio::test]
    async fn seeded_verdict_is_not_emitted_again() {
        let mut runner = ProbeRunner::new(1, "us-east");
        runner.seed("s", "r", false, "committed before the restart");
        assert!(!runner.verdicts().borrow()[&("s".to_string(), "r".to_string())].healthy);
        let mut h = start_with(
            runner,
            Arc::new(Scripted::default()),
            vec![entry("s", "r", check("a:1", 2))],
        );
        h.script.push("a:1", &[false, false, false, true, true]);
        let o = h.out.recv().await.unwrap();
        assert!(o.healthy, "the failing streak matched the seed: {o:?}");
        h.stop().await;
    }

    #[tokio::test]
    async fn stops_on_shutdown_and_when_the_output_closes() {
        let h = start(vec![entry("s", "r", check("a:1", 1))]);
        h.script.wait_started("a:1", 1).await;
        h.stop().await;

        let h = start(vec![entry("s", "r", check("a:1", 1))]);
        let Harness {
            script,
            out,
            handle,
            shutdown: _shutdown,
            checks: _checks,
            ..
        } = h;
        drop(out);
        script.push("a:1", &[true]);
        // The first verdict cannot be delivered: the runner ends by itself.
        handle.await.unwrap();
    }
}
