//! Appending to a history: [`HistoryWriter`] queues records from any task to the one
//! background thread that owns the file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::format::{Call, Clock, Event, Record};

/// What the writer thread is sent.
enum Msg {
    Record(Record),
    Flush(mpsc::Sender<()>),
}

struct WriterInner {
    clock: Clock,
    next_id: AtomicU64,
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

impl Drop for WriterInner {
    fn drop(&mut self) {
        // Closing the channel lets the thread drain what is queued, flush and exit; joining
        // it here is what makes "flushes on drop" true even if nobody called `close`.
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut th) = self.thread.lock() {
            if let Some(h) = th.take() {
                let _ = h.join();
            }
        }
    }
}

/// Appends records to `history.jsonl`: cheap to clone, never blocks the caller (an
/// unbounded queue to one writer thread), flushes at least every 100 ms while idle and
/// completely when the last clone is dropped or [`HistoryWriter::close`] is called.
#[derive(Clone)]
pub struct HistoryWriter {
    inner: Arc<WriterInner>,
}

impl HistoryWriter {
    /// Creates (truncates) `path` and starts the writer thread.
    pub fn create(path: &Path, clock: Clock) -> io::Result<Self> {
        let file = File::create(path)?;
        Ok(Self::from_writer(Box::new(file), clock))
    }

    /// A writer into any sink (tests use a shared buffer).
    pub fn from_writer(sink: Box<dyn Write + Send>, clock: Clock) -> Self {
        let (tx, rx) = mpsc::channel::<Msg>();
        let thread = std::thread::Builder::new()
            .name("history-writer".into())
            .spawn(move || write_loop(sink, rx))
            .expect("spawn history writer thread");
        Self {
            inner: Arc::new(WriterInner {
                clock,
                next_id: AtomicU64::new(1),
                tx: Mutex::new(Some(tx)),
                thread: Mutex::new(Some(thread)),
            }),
        }
    }

    /// The run's clock.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }

    /// Now, on the run's clock.
    pub fn now_ns(&self) -> u64 {
        self.inner.clock.now_ns()
    }

    /// A fresh operation (or write) id, unique in this run.
    pub fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records `event` stamped with the current time; returns the time used.
    pub fn record(&self, event: Event) -> u64 {
        let t = self.now_ns();
        self.record_at(t, event);
        t
    }

    /// Records `event` with a time the caller read earlier from the same clock.
    pub fn record_at(&self, t: u64, event: Event) {
        if let Ok(tx) = self.inner.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                // A send fails only after the writer thread died of an I/O error, which
                // `close` reports; recording must not panic a client task.
                let _ = tx.send(Msg::Record(Record { t, event }));
            }
        }
    }

    /// Records an invocation; returns `(id, invoke time)`.
    pub fn invoke(&self, process: &str, node: Option<u64>, op: Call) -> (u64, u64) {
        let id = self.next_id();
        let t = self.record(Event::Invoke {
            id,
            process: process.to_string(),
            node,
            op,
        });
        (id, t)
    }

    /// Waits until everything recorded so far is on disk (flushed to the OS).
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        let sent = match self.inner.tx.lock() {
            Ok(tx) => tx
                .as_ref()
                .map(|tx| tx.send(Msg::Flush(ack_tx)).is_ok())
                .unwrap_or(false),
            Err(_) => false,
        };
        if sent {
            let _ = ack_rx.recv();
        }
    }

    /// Stops accepting records, writes everything queued and reports the first I/O error.
    /// Other clones become no-ops.
    pub fn close(&self) -> io::Result<()> {
        if let Ok(mut tx) = self.inner.tx.lock() {
            tx.take();
        }
        let handle = self.inner.thread.lock().ok().and_then(|mut t| t.take());
        match handle {
            Some(h) => h
                .join()
                .map_err(|_| io::Error::other("history writer thread panicked"))?,
            None => Ok(()),
        }
    }
}

fn write_loop(sink: Box<dyn Write + Send>, rx: mpsc::Receiver<Msg>) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(1 << 16, sink);
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(Msg::Record(r)) => {
                serde_json::to_writer(&mut w, &r)?;
                w.write_all(b"\n")?;
            }
            Ok(Msg::Flush(ack)) => {
                w.flush()?;
                let _ = ack.send(());
            }
            // Idle: flush so a crashed harness still leaves a nearly complete history.
            Err(mpsc::RecvTimeoutError::Timeout) => w.flush()?,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::super::reader::History;
    use super::super::samples::sample_events;
    use super::*;

    /// A `Write` that appends to a shared buffer so a test can read what was written.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writer_flushes_on_drop_and_reader_roundtrips() {
        let buf = Shared::default();
        let w = HistoryWriter::from_writer(Box::new(buf.clone()), Clock::new());
        let w2 = w.clone();
        for e in sample_events() {
            w2.record(e);
        }
        drop(w2);
        drop(w);
        let bytes = buf.0.lock().unwrap().clone();
        let h = History::parse(&bytes[..]).unwrap();
        let events: Vec<Event> = h.records.iter().map(|r| r.event.clone()).collect();
        assert_eq!(events, sample_events());
        // One clock: times never go backwards in recording order.
        assert!(h.records.windows(2).all(|w| w[0].t <= w[1].t));
    }

    #[test]
    fn flush_and_close_write_everything() {
        let buf = Shared::default();
        let w = HistoryWriter::from_writer(Box::new(buf.clone()), Clock::new());
        w.record(sample_events()[0].clone());
        w.flush();
        assert!(!buf.0.lock().unwrap().is_empty());
        w.close().unwrap();
        // After close, recording is a silent no-op rather than a panic.
        w.record(sample_events()[1].clone());
        let h = History::parse(&buf.0.lock().unwrap()[..]).unwrap();
        assert_eq!(h.records.len(), 1);
    }
}
