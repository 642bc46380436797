//! # baton-jepsen — fault-injection harness for baton
//!
//! Runs real `baton` processes behind a fault proxy, injects faults from a seeded
//! schedule, records what every client, agent and watcher saw, and checks the invariants of
//! `DESIGN.md` on that history.
//!
//! - [`history`]: the recorded history (`history.jsonl`): records, writer, reader.
//! - [`checkers`]: one checker per invariant, each a pure function of the history.
//! - [`proxy`]: the tokio L4 proxy that adds WAN latency and cuts links.
//! - [`nemesis`]: seeded fault schedules and the partition maths.
//! - [`report`]: `results.json`, SVG plots and `index.html` for a run folder.
//! - [`cluster`]: real `baton` processes behind the proxy; the nemesis executor.
//! - [`agents`]: real `baton agent` processes with recording hooks; hook files → history.
//! - [`workload`]: the clients, agents, watchers and fenced resource that write the history.
//! - [`runner`]: one whole `test` run, from start to report.

#![warn(missing_docs)]

pub mod agents;
pub mod checkers;
pub mod cluster;
pub mod history;
pub mod nemesis;
pub mod proxy;
pub mod report;
pub mod runner;
pub mod workload;
