//! The recorded history of a run: one JSON object per line (`history.jsonl`), every record
//! stamped with one monotonic clock (nanoseconds since the run started).
//!
//! The format is documented in `jepsen/README.md`; this module is its single definition.
//! Writers append from many tasks through a cheap cloneable [`HistoryWriter`]; the file is
//! written by one background thread so that recording never blocks a client task and the
//! records of one run are totally ordered by the order the writer received them.
//!
//! - `format`: the run clock and every record type, i.e. the JSON of one line;
//! - `reader`: [`History`], a file read back, and the views checkers derive from it;
//! - `writer`: [`HistoryWriter`], the queue and thread that append records.

mod format;
mod reader;
mod writer;

// The submodules only organise the code: every type keeps its `crate::history::X` path.
pub use format::*;
pub use reader::*;
pub use writer::*;

#[cfg(test)]
mod samples {
    //! Records the reader's and the writer's tests share.

    use super::*;

    pub(super) fn sample_events() -> Vec<Event> {
        vec![
            Event::Invoke {
                id: 1,
                process: "c1".into(),
                node: Some(2),
                op: Call::GetPrimary {
                    service: "payments".into(),
                    consistency: Consistency::Linearizable,
                    final_read: false,
                },
            },
            Event::Ok {
                id: 1,
                result: OpResult::GetPrimary {
                    lease: LeaseObs::held("us-east", 5, 7),
                    node_revision: 9,
                    served_by: Some(2),
                    linearizable: true,
                },
            },
            Event::WatchEvent {
                watcher: "w1".into(),
                node: 1,
                service: "payments".into(),
                revision: 7,
                kind: WatchKind::Granted,
                lease: LeaseObs::held("us-east", 5, 7),
            },
            Event::NemesisStart {
                family: "partition".into(),
                detail: serde_json::json!({"cut": [[1, 2]]}),
            },
        ]
    }
}
