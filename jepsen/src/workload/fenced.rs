//! The fenced resource: a register owned by the harness that accepts a write only with a
//! token not lower than the highest it accepted.

use std::sync::Mutex;

use crate::history::{Event, FenceWrite, HistoryWriter};

/// The fenced resource: accepts a write only with a token not lower than the highest it
/// accepted. Each decision is recorded while holding its lock, so the history order is the
/// resource's order.
pub struct FencedResource {
    name: String,
    history: HistoryWriter,
    inner: Mutex<(u64, Vec<FenceWrite>)>,
}

impl FencedResource {
    /// An empty resource.
    pub fn new(name: &str, history: HistoryWriter) -> Self {
        Self {
            name: name.to_string(),
            history,
            inner: Mutex::new((0, Vec::new())),
        }
    }

    /// A write by `writer` with `token`, whose lease was last confirmed valid at
    /// `checked_ns`. Returns whether it was accepted.
    pub fn write(
        &self,
        writer: &str,
        region: &str,
        service: &str,
        token: u64,
        checked_ns: u64,
    ) -> bool {
        let write = self.history.next_id();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if token >= g.0 {
            g.0 = token;
            g.1.push(FenceWrite {
                write,
                token,
                writer: writer.to_string(),
            });
            self.history.record(Event::FenceAccept {
                resource: self.name.clone(),
                writer: writer.to_string(),
                region: Some(region.to_string()),
                service: service.to_string(),
                token,
                write,
                checked_ns: Some(checked_ns),
            });
            true
        } else {
            let highest = g.0;
            self.history.record(Event::FenceReject {
                resource: self.name.clone(),
                writer: writer.to_string(),
                region: Some(region.to_string()),
                service: service.to_string(),
                token,
                write,
                highest,
                checked_ns: Some(checked_ns),
            });
            false
        }
    }

    /// Records the final contents.
    pub fn finish(&self) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.history.record(Event::FenceFinal {
            resource: self.name.clone(),
            writes: g.1.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Clock, History};
    use std::io::Write;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn fenced_resource_keeps_its_rule_and_records_in_its_order() {
        let buf = Buf::default();
        let w = HistoryWriter::from_writer(Box::new(buf.clone()), Clock::new());
        let r = FencedResource::new("r", w.clone());
        assert!(r.write("a", "us", "s", 5, 1));
        assert!(r.write("b", "eu", "s", 9, 2));
        assert!(!r.write("a", "us", "s", 5, 3));
        assert!(r.write("b", "eu", "s", 9, 4));
        r.finish();
        drop(r);
        w.close().unwrap();
        let h = History::parse(&buf.0.lock().unwrap()[..]).unwrap();
        let v = crate::checkers::fence::check(&h, &crate::checkers::CheckConfig::default());
        assert!(v.valid, "{:?}", v.anomalies);
        assert_eq!(v.checked_ops, 4);
    }
}
