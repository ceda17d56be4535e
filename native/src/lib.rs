//! `gateway_native`: the native engine of the gateway. A thin PyO3 layer over the server: `Server`, and the
//! `Arrival` / `Ending` events Python pulls from the queue with `Server.next_batch`.

#![forbid(unsafe_code)]

pub mod compression;
pub mod decider;
pub mod forward;
pub mod framing;
pub mod metadata;
pub mod plan;
pub mod retry;
pub mod server;
pub mod status;
pub mod timeout;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod loopback_tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use tokio::sync::oneshot;

use crate::decider::{ArrivalEvent, EndingEvent, Event, Headers, Verdict};
use crate::metadata::Value;
use crate::plan::{Plan, Route};
use crate::status::Status;
use crate::upstream::{Address, ConnSettings, Pool, UpstreamTls};

/// How long `next_batch` waits with the GIL released before it looks at signals again.
const POLL: Duration = Duration::from_millis(200);

type TlsTuple = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);
/// The six fields every Method has; a seventh, the retry policy, may follow.
type MethodFields = (String, String, bool, bool, bool, Option<f64>);
/// (max_attempts, initial backoff s, max backoff s, backoff multiplier).
type RetryTuple = (u32, f64, f64, f64);
type UpstreamTlsTuple = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>, String);
type UpstreamTuple = (Vec<String>, Option<UpstreamTlsTuple>);

fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds >= 0, not {value}"
        ))
    })
}

/// Seconds as a limit: 0 (or less) is none.
fn optional_seconds(value: f64, what: &str) -> PyResult<Option<Duration>> {
    if value <= 0.0 {
        return Ok(None);
    }
    seconds(value, what).map(Some)
}

/// One Method tuple as a route: (upstream, service, client_streaming, server_streaming, reads_request,
/// default timeout), then optionally the retry policy (None: no retries).
fn route_from_py(method: &Bound<'_, PyAny>) -> PyResult<Route> {
    let tuple = method
        .cast::<PyTuple>()
        .map_err(|_| PyTypeError::new_err("a method is a tuple of 6 or 7 fields"))?;
    let retry: Option<RetryTuple> = match tuple.len() {
        6 => None,
        7 => tuple.get_item(6)?.extract()?,
        n => {
            return Err(PyTypeError::new_err(format!(
                "a method is a tuple of 6 or 7 fields, not {n}"
            )))
        }
    };
    let (upstream, service, client_streaming, server_streaming, reads_request, timeout): MethodFields =
        tuple.get_slice(0, 6).extract()?;
    let default_timeout = match timeout {
        Some(t) => Some(seconds(t, "a default timeout")?),
        None => None,
    };
    let retry = match retry {
        Some((attempts, initial, max, multiplier)) => Some(
            retry::RetryPolicy::new(attempts, initial, max, multiplier)
                .map_err(PyValueError::new_err)?,
        ),
        None => None,
    };
    Ok(Route {
        upstream,
        service,
        client_streaming,
        server_streaming,
        reads_request,
        default_timeout,
        retry,
    })
}

/// The gateway's gRPC server.
#[pyclass(frozen, module = "gateway_native", name = "Server")]
struct PyServer {
    inner: server::Server,
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (
        host, port, *, reuse_port, io_threads, tls, max_concurrent_streams, max_message_bytes,
        max_metadata_bytes, idle_timeout, header_timeout
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        host: String,
        port: u16,
        reuse_port: bool,
        io_threads: usize,
        tls: Option<TlsTuple>,
        max_concurrent_streams: u32,
        max_message_bytes: u64,
        max_metadata_bytes: u32,
        idle_timeout: f64,
        header_timeout: f64,
    ) -> PyResult<Self> {
        let tls = match tls {
            Some((cert, key, client_ca)) => Some(
                tls::server_config(&cert, &key, client_ca.as_deref())
                    .map_err(PyValueError::new_err)?,
            ),
            None => None,
        };
        let config = server::Config {
            host,
            port,
            reuse_port,
            io_threads,
            tls,
            max_concurrent_streams,
            max_message_bytes,
            max_metadata_bytes,
            idle_timeout: optional_seconds(idle_timeout, "idle_timeout")?,
            header_timeout: optional_seconds(header_timeout, "header_timeout")?,
        };
        Ok(PyServer {
            inner: server::Server::new(config),
        })
    }

    /// Binds and starts serving; returns the bound port.
    fn start(&self, py: Python<'_>) -> PyResult<u16> {
        py.detach(|| self.inner.start())
            .map_err(|e| PyOSError::new_err(e.to_string()))
    }

    /// Swaps the plan: new calls use it, calls in flight keep theirs.
    fn set_plan(
        &self,
        methods: HashMap<String, Bound<'_, PyAny>>,
        upstreams: HashMap<String, UpstreamTuple>,
        keepalive: (f64, f64, bool),
        reconnect: (f64, f64),
    ) -> PyResult<()> {
        let settings = ConnSettings {
            keepalive_interval: optional_seconds(keepalive.0, "the keepalive interval")?,
            keepalive_timeout: seconds(keepalive.1, "the keepalive timeout")?,
            keepalive_while_idle: keepalive.2,
            backoff_initial: seconds(reconnect.0, "the initial reconnect backoff")?,
            backoff_max: seconds(reconnect.1, "the maximum reconnect backoff")?,
        };
        let mut pools = HashMap::with_capacity(upstreams.len());
        for (name, (addresses, tls)) in upstreams {
            let addresses = addresses
                .iter()
                .map(|text| Address::parse(text))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| PyValueError::new_err(format!("upstream {name}: {e}")))?;
            let tls = match tls {
                Some((ca, cert, key, server_name)) => {
                    let config = tls::client_config(ca.as_deref(), cert.as_deref(), key.as_deref())
                        .map_err(|e| PyValueError::new_err(format!("upstream {name}: {e}")))?;
                    Some(UpstreamTls {
                        config,
                        server_name,
                    })
                }
                None => None,
            };
            pools.insert(name, Arc::new(Pool::new(addresses, tls, settings.clone())));
        }
        let mut routes = HashMap::with_capacity(methods.len());
        for (path, method) in methods {
            let route = route_from_py(&method).map_err(|e| {
                PyValueError::new_err(format!("method {path}: {}", e.value(method.py())))
            })?;
            routes.insert(path, route);
        }
        self.inner.shared().set_plan(Plan::new(routes, pools));
        Ok(())
    }

    /// The next events (at most 256), waiting with the GIL released; None once stopped and empty.
    /// With `wait` (seconds), an empty list when nothing came within it, so that the caller can run
    /// periodic work on the same thread.
    #[pyo3(signature = (wait=None))]
    fn next_batch(&self, py: Python<'_>, wait: Option<f64>) -> PyResult<Option<Vec<Py<PyAny>>>> {
        let shared = self.inner.shared().clone();
        let poll = match wait {
            Some(seconds) => Duration::try_from_secs_f64(seconds.max(0.0)).unwrap_or(POLL),
            None => POLL,
        };
        loop {
            let events = match py.detach(|| shared.queue.batch(poll)) {
                None => return Ok(None),
                Some(events) if events.is_empty() && wait.is_none() => {
                    py.check_signals()?;
                    continue;
                }
                Some(events) => events,
            };
            return events
                .into_iter()
                .map(|event| event_to_py(py, event))
                .collect::<PyResult<_>>()
                .map(Some);
        }
    }

    /// The socket that becomes readable when events are waiting: for `loop.add_reader`, with
    /// `take_batch` as its callback.
    fn fileno(&self) -> i64 {
        i64::from(self.inner.shared().queue.fileno())
    }

    /// The events waiting now (at most 256), without blocking; None once stopped and empty.
    fn take_batch(&self, py: Python<'_>) -> PyResult<Option<Vec<Py<PyAny>>>> {
        match self.inner.shared().queue.take() {
            None => Ok(None),
            Some(events) => events
                .into_iter()
                .map(|event| event_to_py(py, event))
                .collect::<PyResult<_>>()
                .map(Some),
        }
    }

    /// Waits, with the GIL released, up to `within` seconds until every event queued before the call
    /// has been taken (by `take_batch` or `next_batch`); whether it was. Any thread but the consumer's
    /// may call it: the consumer would wait on itself.
    fn settle(&self, py: Python<'_>, within: f64) -> PyResult<bool> {
        let within = seconds(within.max(0.0), "within")?;
        let queue = &self.inner.shared().queue;
        Ok(py.detach(|| queue.settle(within)))
    }

    /// New calls are refused at once (UNAVAILABLE) from now on.
    fn drain(&self) {
        self.inner.drain();
    }

    /// Stops: no new connections, calls in flight get up to `grace` seconds, the rest are cancelled.
    fn stop(&self, py: Python<'_>, grace: f64) -> PyResult<()> {
        let grace = seconds(grace.max(0.0), "grace")?;
        py.detach(|| self.inner.stop(grace));
        Ok(())
    }

    #[getter]
    fn active_calls(&self) -> usize {
        self.inner
            .shared()
            .active
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// One call, handed to Python before it is forwarded; answer it once with `admit` or `refuse`.
#[pyclass(frozen, module = "gateway_native")]
struct Arrival {
    #[pyo3(get)]
    method: Py<PyString>,
    #[pyo3(get)]
    metadata: Py<PyTuple>,
    #[pyo3(get)]
    peer: Py<PyString>,
    #[pyo3(get)]
    first: Option<Py<PyBytes>>,
    #[pyo3(get)]
    timeout: Option<f64>,
    reply: Mutex<Option<oneshot::Sender<Verdict>>>,
}

impl Arrival {
    fn answer(&self, verdict: Verdict) -> PyResult<()> {
        let sender = self.reply.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(sender) = sender else {
            return Err(PyRuntimeError::new_err(
                "this call was already admitted or refused",
            ));
        };
        // A call that is gone (cancelled, past its deadline) ignores its verdict; the token is dropped here,
        // attached to Python.
        drop(sender.send(verdict));
        Ok(())
    }
}

#[pymethods]
impl Arrival {
    /// Forwards the call with `upstream_metadata`; `reply_headers` go back with the response headers (the
    /// upstream's, or those before the gateway's own error).
    fn admit(
        &self,
        token: Py<PyAny>,
        upstream_metadata: &Bound<'_, PyAny>,
        reply_headers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let upstream_metadata = metadata_from_py(upstream_metadata, metadata::forwardable)?;
        let reply_headers = metadata_from_py(reply_headers, metadata::replyable)?;
        self.answer(Verdict::Admit {
            token: Some(token),
            upstream_metadata,
            reply_headers,
        })
    }

    /// Answers the call with `code` and `message`: `headers` as initial metadata, then the status and
    /// `trailers` in a trailers frame; trailers-only when `headers` is empty.
    fn refuse(
        &self,
        token: Py<PyAny>,
        code: u32,
        message: String,
        headers: &Bound<'_, PyAny>,
        trailers: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let headers = metadata_from_py(headers, metadata::replyable)?;
        let trailers = metadata_from_py(trailers, metadata::replyable)?;
        self.answer(Verdict::Refuse {
            token: Some(token),
            status: Status::new(code, message),
            headers,
            trailers,
        })
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<Arrival {} from {}>",
            self.method.bind(py),
            self.peer.bind(py)
        )
    }
}

/// A call that is over, however it ended.
#[pyclass(frozen, module = "gateway_native")]
struct Ending {
    token: Option<Py<PyAny>>,
    #[pyo3(get)]
    method: Py<PyString>,
    #[pyo3(get)]
    code: u32,
    #[pyo3(get)]
    received: u64,
    #[pyo3(get)]
    sent: u64,
    /// Seconds since the call ended, when the event was taken.
    #[pyo3(get)]
    ago: f64,
}

#[pymethods]
impl Ending {
    #[getter]
    fn token(&self, py: Python<'_>) -> Py<PyAny> {
        self.token
            .as_ref()
            .map_or_else(|| py.None(), |token| token.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "<Ending {} code={} received={} sent={}>",
            self.method.bind(py),
            self.code,
            self.received,
            self.sent
        )
    }
}

fn event_to_py(py: Python<'_>, event: Event) -> PyResult<Py<PyAny>> {
    match event {
        Event::Arrival(ArrivalEvent {
            method,
            metadata,
            peer,
            first,
            timeout,
            reply,
        }) => {
            let arrival = Arrival {
                method: PyString::new(py, &method).unbind(),
                metadata: metadata_to_py(py, metadata)?.unbind(),
                peer: PyString::new(py, &peer).unbind(),
                first: first.map(|bytes| PyBytes::new(py, &bytes).unbind()),
                timeout,
                reply: Mutex::new(Some(reply)),
            };
            Ok(Py::new(py, arrival)?.into_any())
        }
        Event::Ending(EndingEvent {
            token,
            method,
            code,
            received,
            sent,
            at,
        }) => {
            let ending = Ending {
                token,
                method: PyString::new(py, &method).unbind(),
                code,
                received,
                sent,
                ago: at.elapsed().as_secs_f64(),
            };
            Ok(Py::new(py, ending)?.into_any())
        }
    }
}

fn metadata_to_py(py: Python<'_>, entries: Vec<(String, Value)>) -> PyResult<Bound<'_, PyTuple>> {
    let items = entries
        .into_iter()
        .map(|(name, value)| {
            let value = match value {
                Value::Text(text) => PyString::new(py, &text).into_any(),
                Value::Binary(bytes) => PyBytes::new(py, &bytes).into_any(),
            };
            PyTuple::new(py, [PyString::new(py, &name).into_any(), value])
        })
        .collect::<PyResult<Vec<_>>>()?;
    PyTuple::new(py, items)
}

/// Python metadata (pairs of name and str or bytes) as headers, leaving out the names `keep` refuses.
fn metadata_from_py(
    entries: &Bound<'_, PyAny>,
    keep: fn(&http::HeaderName) -> bool,
) -> PyResult<Headers> {
    let mut headers = Vec::new();
    for entry in entries.try_iter()? {
        let (name, value): (String, Bound<'_, PyAny>) = entry?.extract()?;
        let value = if let Ok(bytes) = value.cast::<PyBytes>() {
            Value::Binary(bytes.as_bytes().to_vec())
        } else if let Ok(text) = value.cast::<PyString>() {
            Value::Text(text.to_str()?.to_owned())
        } else {
            return Err(PyTypeError::new_err(format!(
                "metadata {name:?}: the value must be str or bytes"
            )));
        };
        let (name, value) = metadata::to_header(&name, &value).map_err(PyValueError::new_err)?;
        if keep(&name) {
            headers.push((name, value));
        }
    }
    Ok(headers)
}

#[pymodule]
fn gateway_native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<PyServer>()?;
    module.add_class::<Arrival>()?;
    module.add_class::<Ending>()?;
    Ok(())
}
