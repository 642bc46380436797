//! The status page's rendering: snapshot contents, JSON, server-sent events, escaping.

use std::collections::BTreeMap;

use super::*;
use crate::state::{
    default_plan, Command, Request, Response, RunKind, ServiceSpec, State, StepOutcome, Trigger,
};

const T: i64 = 1_700_000_000_000;
/// A reason that would run script if it ever reached the page as HTML.
const EVIL: &str = "</script><img src=x onerror=alert(1)>&\u{2028}\"'";

fn req(command: Command) -> Request {
    Request {
        at_ms: T,
        actor: "op".into(),
        command,
    }
}

fn applied(s: &mut State, index: u64, command: Command) {
    let a = s.apply(index, &req(command));
    assert!(
        matches!(a.response, Response::Applied { .. }),
        "{:?}",
        a.response
    );
}

/// `payments` held by us-east from its creation (token 1), then a switchover to eu-west started
/// (run 2) and at
/// its first step.
fn state() -> State {
    let mut s = State::default();
    let spec = ServiceSpec::new("payments", &["us-east", "eu-west", "ap-south"]);
    applied(
        &mut s,
        1,
        Command::PutService {
            spec,
            reason: EVIL.into(),
        },
    );
    applied(
        &mut s,
        2,
        Command::StartRun {
            service: "payments".into(),
            kind: RunKind::Switchover,
            trigger: Trigger::Operator,
            to: "eu-west".into(),
            plan: default_plan(RunKind::Switchover),
            reason: "drill".into(),
            detected_ms: T - 40,
            expected_token: Some(1),
        },
    );
    applied(
        &mut s,
        3,
        Command::AdvanceRun {
            service: "payments".into(),
            run: 2,
            step: 0,
            outcome: StepOutcome::Started,
            effect: None,
            phase: None,
            reason: String::new(),
        },
    );
    s
}

fn node() -> NodeFacts {
    NodeFacts {
        cluster: "dev".into(),
        id: 2,
        region: "eu-west".into(),
        role: "follower",
        leader: Some(1),
        term: 3,
        applied: 4,
        last_log: 4,
        current: true,
        members: vec![Member {
            id: 1,
            region: "us-east".into(),
            addr: "127.0.0.1:7101".into(),
            voter: true,
            leader: true,
            this: false,
            matched: None,
            lag: None,
        }],
    }
}

fn voters() -> BTreeMap<u64, String> {
    [(1, "us-east".to_string())].into_iter().collect()
}

#[test]
fn snapshot_names_primary_token_run_and_timeline() {
    let snap = build(node(), &state(), &voters());
    let v: serde_json::Value = serde_json::from_str(&to_json(&snap)).unwrap();
    let svc = &v["services"][0];
    assert_eq!(svc["name"], "payments");
    assert_eq!(svc["primary"], "us-east");
    assert_eq!(svc["state"], "held");
    assert_eq!(svc["token"], 1);
    assert_eq!(svc["mode"], "read-write");
    assert_eq!(svc["run"]["kind"], "switchover");
    assert_eq!(svc["run"]["step"], "precheck");
    assert_eq!(svc["run"]["step_number"], 1);
    assert_eq!(svc["run"]["time_to_detect_ms"], 40);
    // Regions: the members' and the services'.
    assert_eq!(
        v["regions"],
        serde_json::json!(["ap-south", "eu-west", "us-east"])
    );
    // No health check configured: every region unknown, with the reason.
    assert_eq!(svc["health"][0]["verdict"], "unknown");
    assert_eq!(svc["health"][0]["explanation"], "no health check");
    // Timeline: newest first; the grant carries its time and the user's reason verbatim.
    let changes = v["changes"].as_array().unwrap();
    let grant = changes.iter().find(|c| c["kind"] == "granted").unwrap();
    assert_eq!(grant["revision"], 1);
    assert_eq!(grant["holder"], "us-east");
    assert_eq!(grant["at_ms"], T);
    assert!(changes.iter().any(|c| c["reason"] == EVIL), "{changes:?}");
    assert_eq!(v["runs"][0]["id"], 2);
    assert_eq!(v["runs"][0]["state"], "running");
    assert_eq!(v["node"]["role"], "follower");
    assert_eq!(v["node"]["leader"], 1);
    assert!(v["node"]["members"][0]["lag"].is_null());
}

#[test]
fn html_escaping_covers_markup_and_quotes() {
    assert_eq!(
        escape_html(r#"<a href="x" title='y'>&amp;</a>"#),
        "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
    );
    assert_eq!(escape_html("eu-west"), "eu-west");
}

#[test]
fn json_in_a_script_element_cannot_close_it_and_still_parses() {
    let json = serde_json::json!({ "reason": EVIL }).to_string();
    let safe = json_for_script(&json);
    for bad in ["<", ">", "\u{2028}"] {
        assert!(!safe.contains(bad), "{safe}");
    }
    let back: serde_json::Value = serde_json::from_str(&safe).unwrap();
    assert_eq!(back["reason"], EVIL);
}

#[test]
fn page_inlines_the_snapshot_safely_and_loads_nothing_from_elsewhere() {
    let mut n = node();
    n.cluster = "<b>dev</b>".into();
    let snap = build(n, &state(), &voters());
    let html = page(&snap);
    // Two script elements (the JSON and the code), each closed once: the user's
    // `</script>` is escaped.
    assert_eq!(html.matches("</script>").count(), 2, "{html}");
    assert!(!html.contains("<img"), "user markup reached the page");
    assert!(html.contains("<title>baton · node 2 (eu-west) · &lt;b&gt;dev&lt;/b&gt;</title>"));
    let start = html.find(r#"id="initial">"#).unwrap() + r#"id="initial">"#.len();
    let end = start + html[start..].find("</script>").unwrap();
    let inlined: serde_json::Value = serde_json::from_str(&html[start..end]).unwrap();
    let direct: serde_json::Value = serde_json::from_str(&to_json(&snap)).unwrap();
    assert_eq!(inlined, direct);
    for external in ["http://", "https://", "//cdn", "src=\""] {
        assert!(!html.contains(external), "{external} in the page");
    }
    // The code builds the DOM from text only.
    assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML"));
    assert!(!SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("document.write"));
}

#[test]
fn server_sent_events_frame_one_json_line() {
    let snap = build(node(), &state(), &voters());
    let json = to_json(&snap);
    assert!(
        !json.contains('\n'),
        "JSON must be one line for one data field"
    );
    let ev = sse_event("status", &json);
    assert_eq!(ev, format!("event: status\ndata: {json}\n\n"));
    // Multi-line data becomes one data field per line, as the format requires.
    assert_eq!(sse_event("x", "a\r\nb"), "event: x\ndata: a\ndata: b\n\n");
}

#[test]
fn sse_slots_refuse_beyond_the_limit_and_free_on_drop() {
    let slots = SseSlots::new(2);
    let a = slots.admit().unwrap();
    let _b = slots.admit().unwrap();
    assert!(slots.admit().is_none());
    drop(a);
    assert!(slots.admit().is_some());
    assert_eq!(MAX_SSE_CLIENTS, 64);
}

#[test]
fn leader_facts_give_every_member_its_lag() {
    use crate::raft::typ::{CommittedLeaderId, LogId, Membership, StoredMembership};
    use std::collections::BTreeSet;
    let mut m = crate::raft::Metrics::new_initial(1);
    let nodes: BTreeMap<u64, crate::raft::NodeInfo> = (1..=3)
        .map(|i| {
            (
                i,
                crate::raft::NodeInfo {
                    addr: format!("127.0.0.1:710{i}"),
                    region: ["us-east", "eu-west", "ap-south"][i as usize - 1].into(),
                },
            )
        })
        .collect();
    let voters: BTreeSet<u64> = [1, 2].into_iter().collect();
    let membership = Membership::new(vec![voters], nodes);
    m.membership_config = Arc::new(StoredMembership::new(None, membership));
    m.state = ServerState::Leader;
    m.current_leader = Some(1);
    m.last_log_index = Some(10);
    let mut repl = BTreeMap::new();
    repl.insert(2, Some(LogId::new(CommittedLeaderId::new(1, 1), 7)));
    repl.insert(3, None);
    m.replication = Some(repl);
    let f = node_facts("dev", 1, "us-east", true, &m);
    let lags: Vec<(u64, bool, Option<u64>)> =
        f.members.iter().map(|x| (x.id, x.voter, x.lag)).collect();
    assert_eq!(
        lags,
        vec![(1, true, Some(0)), (2, true, Some(3)), (3, false, Some(10))]
    );
    assert_eq!(f.role, "leader");
    assert!(f.members[0].leader && f.members[0].this);
}
