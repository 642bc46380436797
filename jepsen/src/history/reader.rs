//! A history read back: [`History`] parses `history.jsonl` and derives what the checkers
//! look at (operations joined with their completions, nemesis intervals).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use super::format::{Call, Event, OpResult, Record, RunMeta};

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Succeeded with this answer.
    Ok(OpResult),
    /// Definitely did not happen.
    Fail(String),
    /// May or may not have happened.
    Info(String),
    /// No completion was recorded (the run ended first): treated like `Info`.
    Pending,
}

/// An invocation joined with its completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Operation id.
    pub id: u64,
    /// Client.
    pub process: String,
    /// Node asked.
    pub node: Option<u64>,
    /// What was asked.
    pub call: Call,
    /// Invocation time (ns).
    pub invoke_ns: u64,
    /// Completion time (ns); `None` for pending operations.
    pub complete_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// The answer of an `ok` operation.
    pub fn ok(&self) -> Option<&OpResult> {
        match &self.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the outcome is unknown (`info` or never completed).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self.outcome, Outcome::Info(_) | Outcome::Pending)
    }

    /// Outcome name (`ok`, `fail`, `info`, `pending`).
    pub fn outcome_name(&self) -> &'static str {
        match self.outcome {
            Outcome::Ok(_) => "ok",
            Outcome::Fail(_) => "fail",
            Outcome::Info(_) => "info",
            Outcome::Pending => "pending",
        }
    }

    /// A compact JSON description for anomaly reports.
    pub fn describe(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "process": self.process,
            "op": self.call,
            "invoke_ns": self.invoke_ns,
            "complete_ns": self.complete_ns,
            "outcome": self.outcome_name(),
        });
        match &self.outcome {
            Outcome::Ok(r) => v["result"] = serde_json::to_value(r).unwrap_or_default(),
            Outcome::Fail(e) | Outcome::Info(e) => v["error"] = e.clone().into(),
            Outcome::Pending => {}
        }
        if let Some(n) = self.node {
            v["node"] = n.into();
        }
        v
    }
}

/// A problem in the history file itself (not in the system under test).
#[derive(Debug)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "history line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// A whole recorded history, in file order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Every record.
    pub records: Vec<Record>,
}

impl History {
    /// A history of these records.
    pub fn new(records: Vec<Record>) -> Self {
        Self { records }
    }

    /// Reads `history.jsonl`. A torn last line (the harness died mid-write) is skipped;
    /// any other malformed line is an error, because silently dropping records would make
    /// checkers pass on histories they never saw.
    pub fn read(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Self::parse(BufReader::new(file))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Parses JSON lines from a reader (see [`History::read`]).
    pub fn parse<R: BufRead>(reader: R) -> Result<Self, ParseError> {
        let mut records = Vec::new();
        let mut lines = reader.lines().enumerate().peekable();
        while let Some((i, line)) = lines.next() {
            let line = line.map_err(|e| ParseError {
                line: i + 1,
                message: e.to_string(),
            })?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => records.push(r),
                Err(e) if lines.peek().is_none() && e.is_eof() => break,
                Err(e) => {
                    return Err(ParseError {
                        line: i + 1,
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(Self { records })
    }

    /// Writes the history as JSON lines (used by tests and by `check` when it normalises).
    pub fn write_to<W: Write>(&self, mut w: W) -> io::Result<()> {
        for r in &self.records {
            serde_json::to_writer(&mut w, r)?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }

    /// The run parameters, if recorded.
    pub fn meta(&self) -> Option<&RunMeta> {
        self.records.iter().find_map(|r| match &r.event {
            Event::Meta(m) => Some(m),
            _ => None,
        })
    }

    /// Time of the last record (the end of the run).
    pub fn end_ns(&self) -> u64 {
        self.records.iter().map(|r| r.t).max().unwrap_or(0)
    }

    /// Every client operation, invocation joined with completion, ordered by invocation
    /// time. Completions without an invocation are ignored (they cannot be placed).
    pub fn operations(&self) -> Vec<Operation> {
        let mut ops: Vec<Operation> = Vec::new();
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        for r in &self.records {
            match &r.event {
                Event::Invoke {
                    id,
                    process,
                    node,
                    op,
                } => {
                    by_id.insert(*id, ops.len());
                    ops.push(Operation {
                        id: *id,
                        process: process.clone(),
                        node: *node,
                        call: op.clone(),
                        invoke_ns: r.t,
                        complete_ns: None,
                        outcome: Outcome::Pending,
                    });
                }
                Event::Ok { id, result } => {
                    if let Some(&i) = by_id.get(id) {
                        ops[i].complete_ns = Some(r.t);
                        ops[i].outcome = Outcome::Ok(result.clone());
                    }
                }
                Event::Fail { id, error } => {
                    if let Some(&i) = by_id.get(id) {
                        ops[i].complete_ns = Some(r.t);
                        ops[i].outcome = Outcome::Fail(error.clone());
                    }
                }
                Event::Info { id, error } => {
                    if let Some(&i) = by_id.get(id) {
                        ops[i].complete_ns = Some(r.t);
                        ops[i].outcome = Outcome::Info(error.clone());
                    }
                }
                _ => {}
            }
        }
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        ops
    }

    /// Fault intervals `(family, start_ns, stop_ns)`, paired in order per family and detail;
    /// a fault never stopped lasts to the end of the run.
    pub fn nemesis_intervals(&self) -> Vec<(String, u64, u64)> {
        let mut open: Vec<(String, String, u64)> = Vec::new();
        let mut out = Vec::new();
        for r in &self.records {
            match &r.event {
                Event::NemesisStart { family, detail } => {
                    open.push((family.clone(), detail.to_string(), r.t));
                }
                Event::NemesisStop { family, detail } => {
                    let d = detail.to_string();
                    // Prefer the start with the same detail; fall back to the oldest open
                    // fault of the family (an executor may describe the heal differently).
                    let pos = open
                        .iter()
                        .position(|(f, od, _)| f == family && *od == d)
                        .or_else(|| open.iter().position(|(f, _, _)| f == family));
                    if let Some(p) = pos {
                        let (f, _, start) = open.remove(p);
                        out.push((f, start, r.t));
                    }
                }
                _ => {}
            }
        }
        let end = self.end_ns();
        out.extend(open.into_iter().map(|(f, _, s)| (f, s, end)));
        out.sort_by_key(|(_, s, _)| *s);
        out
    }

    /// When the last fault was healed (0 when the run had no faults).
    pub fn last_heal_ns(&self) -> u64 {
        self.nemesis_intervals()
            .iter()
            .map(|(_, _, e)| *e)
            .max()
            .unwrap_or(0)
    }

    /// Whether any fault of `family` was injected.
    pub fn had_fault(&self, family: &str) -> bool {
        self.records
            .iter()
            .any(|r| matches!(&r.event, Event::NemesisStart { family: f, .. } if f == family))
    }
}

#[cfg(test)]
mod tests {
    use super::super::samples::sample_events;
    use super::*;

    #[test]
    fn torn_last_line_is_skipped_but_bad_middle_line_is_an_error() {
        let good = r#"{"t":1,"type":"fail","id":3,"error":"x"}"#;
        let torn = format!("{good}\n{{\"t\":2,\"type\":\"fa");
        assert_eq!(History::parse(torn.as_bytes()).unwrap().records.len(), 1);
        let bad = format!("{good}\n{{\"t\":2,\"type\":\"nope\"}}\n{good}\n");
        let err = History::parse(bad.as_bytes()).unwrap_err();
        assert_eq!(err.line, 2);
    }

    #[test]
    fn operations_join_invocations_and_completions() {
        let recs = vec![
            Record {
                t: 10,
                event: sample_events()[0].clone(),
            },
            Record {
                t: 20,
                event: sample_events()[1].clone(),
            },
            Record {
                t: 30,
                event: Event::Invoke {
                    id: 2,
                    process: "c2".into(),
                    node: None,
                    op: Call::Failover {
                        service: "payments".into(),
                        to_region: "eu".into(),
                        expected_token: 5,
                    },
                },
            },
        ];
        let ops = History::new(recs).operations();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].complete_ns, Some(20));
        assert!(ops[0].ok().is_some());
        assert_eq!(ops[1].outcome, Outcome::Pending);
        assert!(ops[1].is_indeterminate());
    }

    #[test]
    fn nemesis_intervals_pair_starts_and_stops() {
        let d = serde_json::json!({"node": 1});
        let recs = vec![
            Record {
                t: 5,
                event: Event::NemesisStart {
                    family: "kill".into(),
                    detail: d.clone(),
                },
            },
            Record {
                t: 9,
                event: Event::NemesisStop {
                    family: "kill".into(),
                    detail: d.clone(),
                },
            },
            Record {
                t: 12,
                event: Event::NemesisStart {
                    family: "pause".into(),
                    detail: d,
                },
            },
            Record {
                t: 20,
                event: Event::Fail {
                    id: 1,
                    error: String::new(),
                },
            },
        ];
        let h = History::new(recs);
        assert_eq!(
            h.nemesis_intervals(),
            vec![("kill".to_string(), 5, 9), ("pause".to_string(), 12, 20)]
        );
        assert_eq!(h.last_heal_ns(), 20);
        assert!(h.had_fault("pause"));
        assert!(!h.had_fault("clock"));
    }
}
