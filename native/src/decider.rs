//! The queue between the I/O threads and the one Python thread that decides: arrivals (each with a oneshot
//! for its verdict) and endings. The I/O threads never take the GIL; they only push here.

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use http::header::{HeaderName, HeaderValue};
use pyo3::{Py, PyAny};
use tokio::sync::oneshot;

use crate::metadata::Value;
use crate::status::Status;

/// Most events one `next_batch` returns.
pub const BATCH: usize = 256;

/// Arrivals an I/O thread queues before it rings, should it not go idle first.
const RING_AFTER: usize = 64;

/// Endings an I/O thread queues before it rings for them alone.
const QUIET_AFTER: usize = BATCH;

/// How often [`Queue::settle`] looks whether the consumer has taken what it waits for.
const SETTLE_POLL: Duration = Duration::from_millis(1);

thread_local! {
    /// Whether this thread is an I/O thread that says when it goes idle ([`Queue::idle`]).
    static RINGS_WHEN_IDLE: Cell<bool> = const { Cell::new(false) };
}

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
    /// When it ended: it may reach Python a while later.
    pub at: Instant,
}

pub enum Event {
    Arrival(ArrivalEvent),
    Ending(EndingEvent),
}

/// An unbounded multi-producer queue with one consumer, closed once the server has stopped.
///
/// Besides waiting on it ([`Queue::batch`]), the consumer may watch a socket, the bell: one byte is
/// written to it when the queue turns from drained to not, so that an event loop (asyncio's
/// `add_reader`) wakes only when there is work, and takes it without blocking ([`Queue::take`]).
///
/// An I/O thread rings for the arrivals it queued only as it goes idle (or once [`RING_AFTER`]
/// wait): the consumer then wakes once for every call the thread's turn produced, instead of once
/// per call, each wake-up a switch between threads (on a shared CPU, one that preempts the I/O
/// thread mid-turn). Its endings do not ring: they wait for the next ring, a [`Queue::settle`] or
/// the consumer's own beat (once [`QUIET_AFTER`] wait, they ring): under load a call's ending and the
/// next call's arrival then wake the consumer once, not twice, and an ending carries the time it
/// happened. Any other thread rings at once.
pub struct Queue {
    tx: Sender<Event>,
    rx: Receiver<Event>,
    closed: AtomicBool,
    bell: UnixStream,
    ear: UnixStream,
    rung: AtomicBool,
    unrung: AtomicUsize,
    quiet: AtomicUsize,
    pushed: AtomicU64,
    taken: AtomicU64,
}

impl Default for Queue {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        let (bell, ear) = UnixStream::pair().expect("a socket pair for the queue's bell");
        bell.set_nonblocking(true).expect("a non-blocking bell");
        ear.set_nonblocking(true).expect("a non-blocking bell");
        Queue {
            tx,
            rx,
            closed: AtomicBool::new(false),
            bell,
            ear,
            rung: AtomicBool::new(false),
            unrung: AtomicUsize::new(0),
            quiet: AtomicUsize::new(0),
            pushed: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }
}

impl Queue {
    pub fn push(&self, event: Event) {
        let (waiting, after) = match event {
            Event::Arrival(_) => (&self.unrung, RING_AFTER),
            Event::Ending(_) => (&self.quiet, QUIET_AFTER),
        };
        // The queue owns its receiver, so a send cannot fail.
        let _ = self.tx.send(event);
        self.pushed.fetch_add(1, Ordering::SeqCst);
        if RINGS_WHEN_IDLE.with(Cell::get) && waiting.fetch_add(1, Ordering::SeqCst) + 1 < after {
            return;
        }
        self.ring_for_all();
    }

    /// This thread is an I/O thread: from now on its arrivals ring when it calls [`Queue::idle`].
    pub fn rings_when_idle() {
        RINGS_WHEN_IDLE.with(|rings| rings.set(true));
    }

    /// The calling I/O thread goes idle: ring for the arrivals it queued, and the endings with them.
    pub fn idle(&self) {
        if self.unrung.load(Ordering::SeqCst) > 0 {
            self.ring_for_all();
        }
    }

    /// Ring for everything queued, endings too.
    fn ring_for_all(&self) {
        self.unrung.store(0, Ordering::SeqCst);
        self.quiet.store(0, Ordering::SeqCst);
        self.ring();
    }

    /// One byte on the bell, unless one is already waiting to be heard. A full socket buffer means
    /// the consumer has bytes to read anyway, so a failed write loses no wake-up.
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            let _ = (&self.bell).write(&[1]);
        }
    }

    /// No more events will be waited for: `next_batch` returns None once the queue is empty.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.ring();
    }

    /// The socket the bell rings on, for an event loop to watch.
    pub fn fileno(&self) -> RawFd {
        self.ear.as_raw_fd()
    }

    /// What is queued now (at most [`BATCH`]), without waiting; None once closed and empty. The bell's
    /// bytes are read first, then it is re-armed, then the queue is taken: an event pushed before the
    /// re-arming is taken here, one pushed after it rings again (never a byte read with the bell
    /// still armed, which would lose the next wake-up).
    ///
    /// One read takes them all: an armed bell holds one byte, or two when a ring's write lands after
    /// the take that re-armed it, and a byte left over only wakes the consumer to an empty batch.
    pub fn take(&self) -> Option<Vec<Event>> {
        let mut heard = [0u8; 64];
        let _ = (&self.ear).read(&mut heard);
        self.rung.store(false, Ordering::SeqCst);
        let mut events = Vec::new();
        while events.len() < BATCH {
            match self.rx.try_recv() {
                Ok(event) => events.push(event),
                Err(_) => break,
            }
        }
        self.taken.fetch_add(events.len() as u64, Ordering::SeqCst);
        let closed = self.is_closed();
        if events.is_empty() && closed {
            return None;
        }
        // More may be waiting, or, once closed, the consumer must come back until it is told so: the
        // last events of a stop are pushed by I/O threads that shut down before they go idle.
        if events.len() == BATCH || closed {
            self.ring();
        }
        Some(events)
    }

    /// Rings, and waits up to `within` until the consumer has taken every event pushed before the
    /// call (endings that wait for a ring among them); whether it did.
    pub fn settle(&self, within: Duration) -> bool {
        let pushed = self.pushed.load(Ordering::SeqCst);
        if self.taken.load(Ordering::SeqCst) >= pushed {
            return true;
        }
        self.ring();
        let deadline = Instant::now() + within;
        while self.taken.load(Ordering::SeqCst) < pushed {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(SETTLE_POLL);
        }
        true
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
        self.taken.fetch_add(events.len() as u64, Ordering::SeqCst);
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
            at: Instant::now(),
        })
    }

    #[test]
    fn the_bell_rings_once_until_taken() {
        let queue = Queue::default();
        let mut heard = [0u8; 8];
        assert!((&queue.ear).read(&mut heard).is_err()); // nothing yet: would block
        queue.push(ending(0));
        queue.push(ending(1));
        assert_eq!((&queue.ear).read(&mut heard).unwrap(), 1); // one byte for both
        assert_eq!(queue.take().unwrap().len(), 2);
        queue.push(ending(2));
        assert_eq!(queue.take().unwrap().len(), 1); // rang again after the take
        assert!(queue.take().unwrap().is_empty());
        queue.close();
        assert!(queue.take().is_none());
    }

    #[test]
    fn once_closed_the_bell_rings_until_the_queue_is_empty() {
        let queue = Queue::default();
        Queue::rings_when_idle(); // as an I/O thread: its arrivals ring when it goes idle
        let (event, _verdict) = arrival();
        queue.push(event);
        let mut heard = [0u8; 8];
        assert!((&queue.ear).read(&mut heard).is_err()); // not rung yet
        queue.idle();
        assert_eq!((&queue.ear).read(&mut heard).unwrap(), 1);
        queue.push(ending(1)); // an I/O thread's last event, and it never goes idle
        queue.close();
        assert_eq!(queue.take().unwrap().len(), 2);
        assert_eq!((&queue.ear).read(&mut heard).unwrap(), 1); // come back: it is closed
        assert!(queue.take().is_none());
    }

    fn arrival() -> (Event, oneshot::Receiver<Verdict>) {
        let (reply, verdict) = oneshot::channel();
        let event = Event::Arrival(ArrivalEvent {
            method: "/a.B/C".into(),
            metadata: Vec::new(),
            peer: "ipv4:127.0.0.1:1".into(),
            first: None,
            timeout: None,
            reply,
        });
        (event, verdict)
    }

    #[test]
    fn an_io_threads_endings_wait_for_an_arrival_or_a_settle() {
        let queue = std::sync::Arc::new(Queue::default());
        Queue::rings_when_idle();
        let mut heard = [0u8; 8];
        queue.push(ending(0));
        queue.idle();
        assert!((&queue.ear).read(&mut heard).is_err()); // an ending alone does not ring
        let (event, _verdict) = arrival();
        queue.push(event);
        queue.idle();
        assert_eq!((&queue.ear).read(&mut heard).unwrap(), 1); // the arrival rings, for both
        assert_eq!(queue.take().unwrap().len(), 2);

        queue.push(ending(1));
        // Nobody takes it: settling gives up when its time is out.
        assert!(!queue.settle(Duration::from_millis(20)));
        let consumer = {
            let queue = queue.clone();
            std::thread::spawn(move || loop {
                let events = queue.take().unwrap();
                if !events.is_empty() {
                    return events.len();
                }
                std::thread::sleep(Duration::from_millis(1));
            })
        };
        assert!(queue.settle(Duration::from_secs(5)));
        assert_eq!(consumer.join().unwrap(), 1);
        assert!(queue.settle(Duration::ZERO)); // nothing waits
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
