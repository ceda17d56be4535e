//! The queue between the I/O threads and the one Python thread that decides: arrivals (each with a oneshot
//! for its verdict) and endings. The I/O threads never take the GIL; they only push here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use http::header::{HeaderName, HeaderValue};
use pyo3::{Py, PyAny};
use tokio::sync::oneshot;

use crate::metadata::Value;
use crate::status::Status;

/// Most events one `next_batch` returns.
pub const BATCH: usize = 256;

pub type Headers = Vec<(HeaderName, HeaderValue)>;

/// What Python decided on a call.
pub enum Verdict {
    Admit {
        token: Option<Py<PyAny>>,
        upstream_metadata: Headers,
        reply_headers: Headers,
    },
    Refuse {
        token: Option<Py<PyAny>>,
        status: Status,
        headers: Headers,
        trailers: Headers,
    },
}

/// A call waiting for its verdict.
pub struct ArrivalEvent {
    pub method: String,
    pub metadata: Vec<(String, Value)>,
    pub peer: String,
    pub first: Option<Bytes>,
    pub timeout: Option<f64>,
    pub reply: oneshot::Sender<Verdict>,
}

/// A call that is over.
pub struct EndingEvent {
    pub token: Option<Py<PyAny>>,
    pub method: String,
    pub code: u32,
    pub received: u64,
    pub sent: u64,
}

pub enum Event {
    Arrival(ArrivalEvent),
    Ending(EndingEvent),
}

/// An unbounded multi-producer queue with one consumer, closed once the server has stopped.
pub struct Queue {
    tx: Sender<Event>,
    rx: Receiver<Event>,
    closed: AtomicBool,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Queue {
            tx,
            rx,
            closed: AtomicBool::new(false),
        }
    }
}

impl Queue {
    pub fn push(&self, event: Event) {
        // The queue owns its receiver, so a send cannot fail.
        let _ = self.tx.send(event);
    }

    /// No more events will be waited for: `next_batch` returns None once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits up to `wait` for at least one event, then takes what is queued (at most [`BATCH`]).
    /// None when the queue is closed and empty; an empty batch when the wait ran out.
    pub fn batch(&self, wait: Duration) -> Option<Vec<Event>> {
        let first = match self.rx.try_recv() {
            Ok(event) => event,
            Err(_) if self.is_closed() => return None,
            Err(_) => match self.rx.recv_timeout(wait) {
                Ok(event) => event,
                Err(RecvTimeoutError::Timeout) => return Some(Vec::new()),
                Err(RecvTimeoutError::Disconnected) => return None,
            },
        };
        let mut events = Vec::with_capacity(8);
        events.push(first);
        while events.len() < BATCH {
            match self.rx.try_recv() {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        Some(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ending(code: u32) -> Event {
        Event::Ending(EndingEvent {
            token: None,
            method: "/a.B/C".into(),
            code,
            received: 1,
            sent: 1,
        })
    }

    #[test]
    fn batches_at_most_256_then_closes() {
        let queue = Queue::default();
        assert!(queue.batch(Duration::from_millis(1)).unwrap().is_empty());
        for code in 0..300 {
            queue.push(ending(code % 17));
        }
        assert_eq!(queue.batch(Duration::ZERO).unwrap().len(), BATCH);
        queue.close();
        assert_eq!(queue.batch(Duration::ZERO).unwrap().len(), 300 - BATCH);
        assert!(queue.batch(Duration::ZERO).is_none());
    }
}
