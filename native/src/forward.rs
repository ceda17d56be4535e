//! One call, from the caller's HEADERS to its last frame: checks, the first request message, the verdict
//! from Python, then the request streamed upstream and the response streamed back, with the deadline, the
//! message size limit and cancellation enforced on the way; an Ending fired exactly once by a guard.

use std::error::Error as StdError;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pyo3::{Py, PyAny};
use tokio::sync::{oneshot, Notify};
use tokio::time::{sleep_until, Instant, Sleep};

use crate::compression;
use crate::decider::{ArrivalEvent, EndingEvent, Event, Headers, Queue, Verdict};
use crate::framing::{prefix_length, FrameCounter, TooLarge, PREFIX_LEN};
use crate::metadata::{self, Value};
use crate::plan::{Plan, Route};
use crate::retry::{self, Backoff, Pushback, RetryPolicy};
use crate::status::{self, Status};
use crate::timeout::{caller_timeout, encode_grpc_timeout};
use crate::upstream::Pool;

pub type BoxError = Box<dyn StdError + Send + Sync>;

pub const SHUTTING_DOWN: &str = "the gateway is shutting down; retry on another replica";
pub const DEADLINE_BEFORE_FORWARD: &str = "the deadline passed before the call was forwarded";
pub const NO_DECISION: &str = "the gateway failed to decide on this call";

static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
static GRPC_ACCEPT_ENCODING: HeaderName = HeaderName::from_static("grpc-accept-encoding");
static GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");
static APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
static TRAILERS: HeaderValue = HeaderValue::from_static("trailers");

/// What every call shares: the queue to Python, the plan, the drain flag, the count of calls.
pub struct Shared {
    pub queue: Queue,
    plan: RwLock<Arc<Plan>>,
    pub draining: AtomicBool,
    pub active: AtomicUsize,
    pub max_message_bytes: u64,
    pub max_metadata_bytes: u64,
}

impl Shared {
    pub fn new(max_message_bytes: u64, max_metadata_bytes: u64) -> Shared {
        Shared {
            queue: Queue::default(),
            plan: RwLock::new(Arc::new(Plan::default())),
            draining: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            max_message_bytes,
            max_metadata_bytes,
        }
    }

    pub fn plan(&self) -> Arc<Plan> {
        self.plan.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_plan(&self, plan: Plan) {
        *self.plan.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(plan);
    }
}

/// Per connection: its open streams, whether one ever came, and since when it has had none.
pub struct ConnState {
    born: Instant,
    streams: AtomicUsize,
    had_stream: AtomicBool,
    idle_since_ms: AtomicU64,
    /// Told when the connection gets its first stream and whenever it becomes idle.
    pub changed: Notify,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            born: Instant::now(),
            streams: AtomicUsize::new(0),
            had_stream: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }
}

impl ConnState {
    pub fn born(&self) -> Instant {
        self.born
    }

    pub fn had_stream(&self) -> bool {
        self.had_stream.load(Ordering::SeqCst)
    }

    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// When the connection last became idle (its birth when it never had a stream).
    pub fn idle_since(&self) -> Instant {
        self.born + Duration::from_millis(self.idle_since_ms.load(Ordering::SeqCst))
    }

    fn opened(&self) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        if !self.had_stream.swap(true, Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }

    fn closed(&self) {
        let millis = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(millis, Ordering::SeqCst);
        if self.streams.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.changed.notify_one();
        }
    }
}

/// Fires the call's Ending exactly once, when dropped: with the status the caller got, or CANCELLED when the
/// call ended before one was sent (the caller reset it, or the server stopped).
pub struct CallGuard {
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    method: String,
    token: Option<Py<PyAny>>,
    code: Option<u32>,
    received: Arc<AtomicU64>,
    sent: u64,
    /// Dropping it cancels the request body still streaming upstream.
    cancel: Option<oneshot::Sender<()>>,
}

impl CallGuard {
    fn new(shared: Arc<Shared>, conn: Arc<ConnState>, method: String) -> CallGuard {
        shared.active.fetch_add(1, Ordering::SeqCst);
        conn.opened();
        CallGuard {
            shared,
            conn,
            method,
            token: None,
            code: None,
            received: Arc::new(AtomicU64::new(0)),
            sent: 0,
            cancel: None,
        }
    }

    fn cancel_request(&mut self) {
        self.cancel = None;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.cancel = None;
        self.shared.queue.push(Event::Ending(EndingEvent {
            token: self.token.take(),
            method: std::mem::take(&mut self.method),
            code: self.code.unwrap_or(status::CANCELLED),
            received: self.received.load(Ordering::SeqCst),
            sent: self.sent,
            at: std::time::Instant::now(),
        }));
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
        self.conn.closed();
    }
}

/// Resolves with the status the request side aborted the call with (a message over the limit); pending
/// forever once the request side finished without aborting.
struct AbortSignal(Option<oneshot::Receiver<Status>>);

impl AbortSignal {
    fn poll_abort(&mut self, cx: &mut Context<'_>) -> Poll<Status> {
        let Some(rx) = self.0.as_mut() else {
            return Poll::Pending;
        };
        let result = ready!(Pin::new(rx).poll(cx));
        self.0 = None;
        match result {
            Ok(status) => Poll::Ready(status),
            Err(_) => Poll::Pending,
        }
    }

    async fn aborted(&mut self) -> Status {
        poll_fn(|cx| self.poll_abort(cx)).await
    }
}

async fn deadline_passed(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

/// `future`, unless `deadline` comes first (None).
async fn until<F: Future>(deadline: Option<Instant>, future: F) -> Option<F::Output> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, future).await.ok(),
        None => Some(future.await),
    }
}

/// The body of the request sent upstream: the bytes read before the verdict, then the rest of the caller's
/// body as it comes, counting messages and enforcing the size limit; fails (so hyper resets the upstream
/// stream with CANCEL) when the call is cancelled or a message is too large.
pub struct UpstreamBody {
    first: Option<Bytes>,
    caller: Option<Incoming>,
    counter: FrameCounter,
    received: Arc<AtomicU64>,
    abort: Option<oneshot::Sender<Status>>,
    cancel: Option<oneshot::Receiver<()>>,
}

fn cancelled_error() -> BoxError {
    Box::new(h2::Error::from(h2::Reason::CANCEL))
}

impl UpstreamBody {
    /// A whole request, already checked and counted: one attempt of a call that may be retried.
    fn whole(request: Bytes) -> UpstreamBody {
        UpstreamBody {
            first: (!request.is_empty()).then_some(request),
            caller: None,
            counter: FrameCounter::new(None),
            received: Arc::new(AtomicU64::new(0)),
            abort: None,
            cancel: None,
        }
    }

    fn count(&mut self, data: &[u8]) -> Result<(), BoxError> {
        match self.counter.feed(data) {
            Ok(complete) => {
                self.received.fetch_add(complete, Ordering::SeqCst);
                Ok(())
            }
            Err(too_large) => Err(self.fail(Some(too_large))),
        }
    }

    fn fail(&mut self, too_large: Option<TooLarge>) -> BoxError {
        if let (Some(abort), Some(too_large)) = (self.abort.take(), too_large) {
            let _ = abort.send(too_large.request_status());
        }
        self.first = None;
        self.caller = None;
        self.cancel = None;
        cancelled_error()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(cancel) = this.cancel.as_mut() {
            if Pin::new(cancel).poll(cx).is_ready() {
                return Poll::Ready(Some(Err(this.fail(None))));
            }
        }
        if let Some(first) = this.first.take() {
            if let Err(error) = this.count(&first) {
                return Poll::Ready(Some(Err(error)));
            }
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(caller) = this.caller.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(Pin::new(caller).poll_frame(cx)) {
            None => {
                this.caller = None;
                Poll::Ready(None)
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(error) = this.count(data) {
                        return Poll::Ready(Some(Err(error)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            // The caller reset its stream (or its connection broke).
            Some(Err(_)) => Poll::Ready(Some(Err(this.fail(None)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none()
            && self
                .caller
                .as_ref()
                .is_none_or(|caller| caller.is_end_stream())
    }
}

/// The body of the response to the caller: nothing (trailers-only), trailers alone (an answer with no
/// message after its headers), or the upstream's body streamed with its messages counted, ended by the
/// upstream's trailers or by trailers the gateway writes (deadline, request too large, upstream reset).
pub struct CallBody {
    upstream: Option<Incoming>,
    /// Trailers to send next, ending the response.
    trailers: Option<HeaderMap>,
    deadline: Option<Pin<Box<Sleep>>>,
    abort: AbortSignal,
    counter: FrameCounter,
    label: String,
    guard: CallGuard,
    done: bool,
}

impl CallBody {
    fn finished(guard: CallGuard) -> CallBody {
        CallBody {
            upstream: None,
            trailers: None,
            deadline: None,
            abort: AbortSignal(None),
            counter: FrameCounter::new(None),
            label: String::new(),
            guard,
            done: true,
        }
    }

    /// No message, only `trailers` after the response headers.
    fn trailers_only_after_headers(guard: CallGuard, trailers: HeaderMap) -> CallBody {
        CallBody {
            trailers: Some(trailers),
            done: false,
            ..CallBody::finished(guard)
        }
    }

    fn end_with(&mut self, status: Status) -> Frame<Bytes> {
        self.upstream = None;
        self.deadline = None;
        self.done = true;
        self.guard.cancel_request();
        self.guard.code = Some(status.code);
        Frame::trailers(status.to_headers())
    }
}

impl Body for CallBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(trailers) = this.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if let Poll::Ready(status) = this.abort.poll_abort(cx) {
            return Poll::Ready(Some(Ok(this.end_with(status))));
        }
        if let Some(sleep) = this.deadline.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                let status = Status::new(status::DEADLINE_EXCEEDED, "deadline exceeded");
                return Poll::Ready(Some(Ok(this.end_with(status))));
            }
        }
        let Some(upstream) = this.upstream.as_mut() else {
            this.done = true;
            return Poll::Ready(None);
        };
        match ready!(Pin::new(upstream).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.guard.sent += this.counter.feed(data).unwrap_or(0);
                    return Poll::Ready(Some(Ok(frame)));
                }
                match frame.into_trailers() {
                    Ok(mut trailers) => {
                        let code = match status::parse_grpc_status(&trailers) {
                            Some(code) => code,
                            None => {
                                let message =
                                    format!("{} sent trailers without grpc-status", this.label);
                                trailers.remove(&status::GRPC_MESSAGE);
                                Status::new(status::UNKNOWN, message).write_to(&mut trailers);
                                status::UNKNOWN
                            }
                        };
                        this.upstream = None;
                        this.deadline = None;
                        this.done = true;
                        this.guard.code = Some(code);
                        this.guard.cancel_request();
                        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                    }
                    // A frame kind http-body may add one day: passed on as it is.
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                }
            }
            Some(Err(error)) => {
                let status = classify(&error, &this.label);
                Poll::Ready(Some(Ok(this.end_with(status))))
            }
            None => {
                let message = format!("{} ended the response without grpc-status", this.label);
                Poll::Ready(Some(Ok(
                    this.end_with(Status::new(status::UNKNOWN, message))
                )))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The gRPC status a caller gets for an upstream failure: an RST_STREAM by its h2 reason, a lost connection
/// or anything else as UNAVAILABLE.
pub fn classify(error: &(dyn StdError + 'static), label: &str) -> Status {
    let mut source: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(h2_error) = current.downcast_ref::<h2::Error>() {
            if h2_error.is_reset() {
                let reason = h2_error.reason().unwrap_or(h2::Reason::INTERNAL_ERROR);
                let code = status::code_for_h2_reason(reason);
                let message = match code {
                    status::UNAVAILABLE => {
                        format!("{label} is unavailable: it refused the stream ({reason:?})")
                    }
                    status::CANCELLED => format!("{label} cancelled the call"),
                    _ => format!("{label} reset the call ({reason:?})"),
                };
                return Status::new(code, message);
            }
            if h2_error.is_go_away() {
                return Status::new(
                    status::UNAVAILABLE,
                    format!("{label} is unavailable: it closed the connection"),
                );
            }
            if h2_error.is_io() {
                return Status::new(
                    status::UNAVAILABLE,
                    format!("{label} is unavailable: connection lost ({h2_error})"),
                );
            }
        }
        source = current.source();
    }
    Status::new(
        status::UNAVAILABLE,
        format!("{label} is unavailable: {error}"),
    )
}

/// The gateway's own answer, with no message. With `headers`: HEADERS (`http` status, content-type,
/// `headers`), then a trailers frame (grpc-status, grpc-message, `trailers`), because grpc clients read the
/// headers of a trailers-only reply as trailing metadata and callers look for the gateway's reply headers
/// (x-request-id) in the initial metadata. Without: trailers-only, all in one HEADERS frame.
fn answer(
    mut guard: CallGuard,
    http: StatusCode,
    status: Status,
    headers: &[(HeaderName, HeaderValue)],
    trailers: &[(HeaderName, HeaderValue)],
) -> Response<CallBody> {
    guard.code = Some(status.code);
    guard.cancel_request();
    if headers.is_empty() {
        let mut response = Response::new(CallBody::finished(guard));
        *response.status_mut() = http;
        let map = response.headers_mut();
        map.insert(CONTENT_TYPE, APPLICATION_GRPC.clone());
        status.write_to(map);
        metadata::append_all(map, trailers);
        return response;
    }
    let mut tail = status.to_headers();
    metadata::append_all(&mut tail, trailers);
    let mut response = Response::new(CallBody::trailers_only_after_headers(guard, tail));
    *response.status_mut() = http;
    let map = response.headers_mut();
    map.insert(CONTENT_TYPE, APPLICATION_GRPC.clone());
    metadata::append_all(map, headers);
    response
}

fn refuse(guard: CallGuard, status: Status) -> Response<CallBody> {
    answer(guard, StatusCode::OK, status, &[], &[])
}

/// The caller's metadata as Python sees it, and its timeout.
pub type CallerHeaders = (Vec<(String, Value)>, Option<Duration>);

/// What a caller's headers must pass before Python is asked: the metadata's size under the limit (as
/// HTTP/2 counts it), a well-formed grpc-timeout (gRPC servers answer a malformed one with INTERNAL), base64
/// in every `-bin` header.
pub fn check_caller_headers(
    headers: &HeaderMap,
    max_metadata_bytes: u64,
) -> Result<CallerHeaders, Status> {
    let size = metadata::header_list_size(headers);
    if size > max_metadata_bytes {
        return Err(Status::new(
            status::RESOURCE_EXHAUSTED,
            metadata::too_large_message(size, max_metadata_bytes),
        ));
    }
    let timeout = caller_timeout(headers.get(&GRPC_TIMEOUT).map(HeaderValue::as_bytes))
        .map_err(|message| Status::new(status::INTERNAL, message))?;
    let metadata = metadata::from_headers(headers)
        .map_err(|message| Status::new(status::INVALID_ARGUMENT, message))?;
    Ok((metadata, timeout))
}

/// The bytes read up to the end of the first whole message.
struct FirstRead {
    buffered: Bytes,
    payload: Option<Bytes>,
    /// The first message's compressed flag.
    compressed: bool,
    ended: bool,
}

enum FirstError {
    TooLarge(TooLarge),
    Caller,
}

async fn read_first(body: &mut Incoming, limit: u64) -> Result<FirstRead, FirstError> {
    let mut buffer = BytesMut::new();
    let mut ended = false;
    loop {
        if let Some(size) = prefix_length(&buffer) {
            if size > limit {
                return Err(FirstError::TooLarge(TooLarge { size, limit }));
            }
            if buffer.len() as u64 >= PREFIX_LEN as u64 + size {
                break;
            }
        }
        match body.frame().await {
            None => {
                ended = true;
                break;
            }
            Some(Err(_)) => return Err(FirstError::Caller),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buffer.extend_from_slice(&data);
                }
            }
        }
    }
    let buffered = buffer.freeze();
    let payload = prefix_length(&buffered).and_then(|size| {
        let end = PREFIX_LEN + usize::try_from(size).ok()?;
        (buffered.len() >= end).then(|| buffered.slice(PREFIX_LEN..end))
    });
    Ok(FirstRead {
        compressed: buffered.first().is_some_and(|flag| *flag != 0),
        buffered,
        payload,
        ended,
    })
}

/// Serves one call.
pub async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ConnState>,
    peer: Arc<str>,
) -> Response<CallBody> {
    let method = request.uri().path().to_owned();
    let guard = CallGuard::new(shared.clone(), conn, method.clone());
    if request.method() != Method::POST {
        let status = Status::new(
            status::INTERNAL,
            format!("gRPC calls are POST, not {}", request.method()),
        );
        return answer(guard, StatusCode::METHOD_NOT_ALLOWED, status, &[], &[]);
    }
    let content_type = request.headers().get(CONTENT_TYPE).cloned();
    let content_type = match content_type {
        Some(value) if value.as_bytes().starts_with(b"application/grpc") => value,
        other => {
            let shown = other
                .as_ref()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let message = format!(
                "invalid gRPC request content-type {:?}",
                shown.unwrap_or_default()
            );
            return answer(
                guard,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Status::new(status::INTERNAL, message),
                &[],
                &[],
            );
        }
    };
    let (metadata, caller_timeout) =
        match check_caller_headers(request.headers(), shared.max_metadata_bytes) {
            Ok(checked) => checked,
            Err(status) => return refuse(guard, status),
        };
    if shared.draining.load(Ordering::SeqCst) {
        return refuse(guard, Status::new(status::UNAVAILABLE, SHUTTING_DOWN));
    }

    let arrived = Instant::now();
    let plan = shared.plan();
    let route = plan.route(&method).cloned();
    let budget = caller_timeout.or_else(|| route.as_ref().and_then(|r| r.default_timeout));
    if budget == Some(Duration::ZERO) {
        return refuse(
            guard,
            Status::new(status::DEADLINE_EXCEEDED, DEADLINE_BEFORE_FORWARD),
        );
    }
    let deadline = budget.and_then(|budget| arrived.checked_add(budget));

    let (parts, mut body) = request.into_parts();
    let reads_request = route.as_ref().is_some_and(|r| r.reads_request);
    let first = if reads_request {
        match until(deadline, read_first(&mut body, shared.max_message_bytes)).await {
            None => {
                return refuse(
                    guard,
                    Status::new(status::DEADLINE_EXCEEDED, DEADLINE_BEFORE_FORWARD),
                )
            }
            Some(Err(FirstError::TooLarge(too_large))) => {
                return refuse(guard, too_large.request_status())
            }
            Some(Err(FirstError::Caller)) => {
                return refuse(
                    guard,
                    Status::new(status::CANCELLED, "the caller cancelled the call"),
                )
            }
            Some(Ok(first)) => first,
        }
    } else {
        FirstRead {
            buffered: Bytes::new(),
            payload: None,
            compressed: false,
            ended: false,
        }
    };
    // Python reads the message as the caller meant it; the upstream gets the bytes as they came.
    let readable = match &first.payload {
        None => None,
        Some(payload) => match compression::readable(
            first.compressed,
            parts.headers.get(&GRPC_ENCODING).map(HeaderValue::as_bytes),
            payload,
            shared.max_message_bytes,
        ) {
            Ok(None) => Some(payload.clone()),
            Ok(Some(inflated)) => Some(Bytes::from(inflated)),
            Err(refusal) => {
                return answer(guard, StatusCode::OK, refusal.status, &[], &refusal.headers)
            }
        },
    };

    let (reply, verdict) = oneshot::channel();
    let now = Instant::now();
    shared.queue.push(Event::Arrival(ArrivalEvent {
        method: method.clone(),
        metadata,
        peer: peer.to_string(),
        first: readable,
        timeout: caller_timeout.map(|t| {
            arrived
                .checked_add(t)
                .map_or(t, |end| end.saturating_duration_since(now))
                .as_secs_f64()
        }),
        reply,
    }));
    let verdict = match until(deadline, verdict).await {
        None => {
            return refuse(
                guard,
                Status::new(status::DEADLINE_EXCEEDED, DEADLINE_BEFORE_FORWARD),
            )
        }
        Some(Err(_)) => return refuse(guard, Status::new(status::INTERNAL, NO_DECISION)),
        Some(Ok(verdict)) => verdict,
    };
    match verdict {
        Verdict::Refuse {
            token,
            status,
            headers,
            trailers,
        } => {
            let mut guard = guard;
            guard.token = token;
            answer(guard, StatusCode::OK, status, &headers, &trailers)
        }
        Verdict::Admit {
            token,
            upstream_metadata,
            reply_headers,
        } => {
            let mut guard = guard;
            guard.token = token;
            let caller = Caller {
                parts,
                body,
                first,
                content_type,
                deadline,
            };
            forward(
                guard,
                &shared,
                &plan,
                route.as_ref(),
                caller,
                upstream_metadata,
                reply_headers,
            )
            .await
        }
    }
}

/// What the forwarding needs of the caller's request.
struct Caller {
    parts: http::request::Parts,
    body: Incoming,
    first: FirstRead,
    content_type: HeaderValue,
    deadline: Option<Instant>,
}

fn deadline_status() -> Status {
    Status::new(status::DEADLINE_EXCEEDED, "deadline exceeded")
}

async fn forward(
    guard: CallGuard,
    shared: &Shared,
    plan: &Plan,
    route: Option<&Route>,
    caller: Caller,
    upstream_metadata: Headers,
    reply_headers: Headers,
) -> Response<CallBody> {
    let Some(route) = route else {
        let status = Status::new(status::UNIMPLEMENTED, "unknown method");
        return answer(guard, StatusCode::OK, status, &reply_headers, &[]);
    };
    let label = format!("upstream {} for {}", route.upstream, route.service);
    let Some(pool) = plan.pool(&route.upstream) else {
        let status = Status::new(
            status::UNAVAILABLE,
            format!("{label} is unavailable: it is not in the plan"),
        );
        return answer(guard, StatusCode::OK, status, &reply_headers, &[]);
    };

    let Caller {
        parts,
        body,
        first,
        content_type,
        deadline,
    } = caller;
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str())
        .to_owned();
    let mut headers = HeaderMap::with_capacity(upstream_metadata.len() + 6);
    for (name, value) in upstream_metadata {
        if metadata::forwardable(&name) {
            headers.append(name, value);
        }
    }
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(TE, TRAILERS.clone());
    for name in [&GRPC_ENCODING, &GRPC_ACCEPT_ENCODING] {
        for value in parts.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let forwarding = Forwarding {
        pool,
        label,
        path,
        headers,
        deadline,
        reply_headers,
        max_message_bytes: shared.max_message_bytes,
    };

    let rest = (!first.ended).then_some(body);
    let retry = route
        .retry
        .as_ref()
        .filter(|_| !route.client_streaming && !route.server_streaming);
    let Some(policy) = retry else {
        return forwarding.once(guard, first.buffered, rest).await;
    };
    match until(
        deadline,
        buffer_request(first.buffered, rest, shared.max_message_bytes),
    )
    .await
    {
        None => forwarding.fail(guard, deadline_status()),
        Some(Buffered::Whole(request, messages)) => {
            guard.received.store(messages, Ordering::SeqCst);
            forwarding.retrying(guard, policy, request).await
        }
        Some(Buffered::Partial(buffered, rest)) => {
            forwarding.once(guard, buffered, Some(rest)).await
        }
        Some(Buffered::TooLarge(too_large)) => forwarding.fail(guard, too_large.request_status()),
        Some(Buffered::CallerGone) => forwarding.fail(
            guard,
            Status::new(status::CANCELLED, "the caller cancelled the call"),
        ),
    }
}

/// A request read for retries.
enum Buffered {
    /// The whole request, and how many whole messages it holds.
    Whole(Bytes, u64),
    /// Longer than one message at the limit: what was read, and the rest still to come.
    Partial(Bytes, Incoming),
    TooLarge(TooLarge),
    CallerGone,
}

/// The whole request of a call that may be retried: `read` (what was read already), then the rest of the
/// body up to its end. A body longer than one message at the limit is not kept for retries (a unary call
/// sends one message): it is forwarded as it comes.
async fn buffer_request(read: Bytes, rest: Option<Incoming>, limit: u64) -> Buffered {
    let mut counter = FrameCounter::new(Some(limit));
    if let Err(too_large) = counter.feed(&read) {
        return Buffered::TooLarge(too_large);
    }
    let Some(mut body) = rest else {
        return Buffered::Whole(read, counter.complete());
    };
    let bound = limit.saturating_add(PREFIX_LEN as u64);
    let mut buffer = BytesMut::from(&read[..]);
    loop {
        match body.frame().await {
            None => return Buffered::Whole(buffer.freeze(), counter.complete()),
            Some(Err(_)) => return Buffered::CallerGone,
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if let Err(too_large) = counter.feed(&data) {
                    return Buffered::TooLarge(too_large);
                }
                buffer.extend_from_slice(&data);
                if buffer.len() as u64 > bound {
                    return Buffered::Partial(buffer.freeze(), body);
                }
            }
        }
    }
}

/// How one attempt went.
enum Attempt {
    /// The upstream answered: its response.
    Answered(Response<Incoming>),
    /// No answer: the status the caller would get (UNAVAILABLE ones may be retried).
    Failed(Status),
    /// The call is over whatever the policy (deadline, request too large): the status the caller gets.
    Final(Status),
}

/// A failed attempt that may be retried.
enum Failure {
    /// The gateway's words for it (no connection, the stream refused).
    Gateway(Status),
    /// The upstream's trailers-only UNAVAILABLE, passed on as it came when no retry follows.
    Upstream(Response<Incoming>),
}

fn unavailable_trailers_only(response: &Response<Incoming>) -> bool {
    response.status() == StatusCode::OK
        && status::parse_grpc_status(response.headers()) == Some(status::UNAVAILABLE)
}

/// An admitted call on its way to one upstream.
struct Forwarding<'a> {
    pool: &'a Pool,
    label: String,
    /// `:path` (and query) of the upstream request.
    path: String,
    /// The upstream request's headers, but grpc-timeout (set per attempt, from the time left).
    headers: HeaderMap,
    deadline: Option<Instant>,
    reply_headers: Headers,
    max_message_bytes: u64,
}

impl Forwarding<'_> {
    /// The gateway's own error for an admitted call, after the reply headers.
    fn fail(&self, guard: CallGuard, status: Status) -> Response<CallBody> {
        answer(guard, StatusCode::OK, status, &self.reply_headers, &[])
    }

    /// Forwards the call once: `read` (bytes already read of the request), then `rest` as it comes.
    async fn once(
        mut self,
        mut guard: CallGuard,
        read: Bytes,
        rest: Option<Incoming>,
    ) -> Response<CallBody> {
        let (abort_tx, abort_rx) = oneshot::channel();
        let (cancel_tx, cancel_rx) = oneshot::channel();
        guard.cancel = Some(cancel_tx);
        let body = UpstreamBody {
            first: (!read.is_empty()).then_some(read),
            caller: rest,
            counter: FrameCounter::new(Some(self.max_message_bytes)),
            received: guard.received.clone(),
            abort: Some(abort_tx),
            cancel: Some(cancel_rx),
        };
        let mut abort = AbortSignal(Some(abort_rx));
        let mut sleep = self
            .deadline
            .map(|deadline| Box::pin(sleep_until(deadline)));
        let headers = std::mem::take(&mut self.headers);
        match self.send(headers, body, &mut sleep, &mut abort).await {
            Attempt::Answered(response) => self.respond(guard, response, sleep, abort),
            Attempt::Failed(status) | Attempt::Final(status) => self.fail(guard, status),
        }
    }

    /// Forwards a whole unary request, again while attempts fail UNAVAILABLE before any response header,
    /// under `policy` and the upstream's retry throttling, never past the deadline.
    async fn retrying(
        self,
        guard: CallGuard,
        policy: &RetryPolicy,
        request: Bytes,
    ) -> Response<CallBody> {
        let mut backoff = Backoff::new(policy);
        let mut sleep = self
            .deadline
            .map(|deadline| Box::pin(sleep_until(deadline)));
        let mut abort = AbortSignal(None);
        let mut attempts: u32 = 0;
        loop {
            let mut headers = self.headers.clone();
            if attempts > 0 {
                headers.insert(
                    GRPC_PREVIOUS_RPC_ATTEMPTS.clone(),
                    HeaderValue::from(attempts),
                );
            }
            attempts += 1;
            let failure = match self
                .send(
                    headers,
                    UpstreamBody::whole(request.clone()),
                    &mut sleep,
                    &mut abort,
                )
                .await
            {
                Attempt::Final(status) => return self.fail(guard, status),
                Attempt::Failed(status) if status.code != status::UNAVAILABLE => {
                    return self.fail(guard, status)
                }
                Attempt::Failed(status) => Failure::Gateway(status),
                Attempt::Answered(response) if unavailable_trailers_only(&response) => {
                    Failure::Upstream(response)
                }
                Attempt::Answered(response) => {
                    let code = status::parse_grpc_status(response.headers());
                    if response.status() == StatusCode::OK && code.is_none_or(|c| c == status::OK) {
                        self.pool.throttle.record_success();
                    }
                    return self.respond(guard, response, sleep, abort);
                }
            };
            let pushback = match &failure {
                Failure::Upstream(response) => retry::pushback(response.headers()),
                Failure::Gateway(_) => Pushback::None,
            };
            let allowed = self.pool.throttle.record_failure();
            let wait = match pushback {
                _ if attempts >= policy.max_attempts || !allowed => None,
                Pushback::Stop => None,
                Pushback::After(wait) => {
                    backoff.reset();
                    Some(wait)
                }
                Pushback::None => Some(backoff.next(fastrand::f64())),
            }
            .filter(|wait| {
                self.deadline
                    .is_none_or(|deadline| Instant::now() + *wait < deadline)
            });
            let Some(wait) = wait else {
                return match failure {
                    Failure::Gateway(status) => self.fail(guard, status),
                    Failure::Upstream(response) => self.respond(guard, response, sleep, abort),
                };
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt: a connection picked (the next address, round-robin), the request sent with the time
    /// left as grpc-timeout, the response head awaited.
    async fn send(
        &self,
        mut headers: HeaderMap,
        body: UpstreamBody,
        sleep: &mut Option<Pin<Box<Sleep>>>,
        abort: &mut AbortSignal,
    ) -> Attempt {
        let picked = match until(self.deadline, self.pool.pick()).await {
            None => return Attempt::Final(deadline_status()),
            Some(Err(reason)) => {
                return Attempt::Failed(Status::new(
                    status::UNAVAILABLE,
                    format!("{} is unavailable: {reason}", self.label),
                ))
            }
            Some(Ok(picked)) => picked,
        };
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Attempt::Final(deadline_status());
            }
            if let Ok(value) = HeaderValue::from_str(&encode_grpc_timeout(left)) {
                headers.insert(GRPC_TIMEOUT.clone(), value);
            }
        }
        let uri = format!("{}://{}{}", picked.scheme, picked.authority, self.path);
        let mut request = Request::new(body);
        *request.method_mut() = Method::POST;
        *request.headers_mut() = headers;
        match uri.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                return Attempt::Final(Status::new(
                    status::INTERNAL,
                    format!("cannot forward to {uri:?}"),
                ))
            }
        }
        let mut sender = picked.sender;
        let result = tokio::select! {
            biased;
            status = abort.aborted() => Err(status),
            () = deadline_passed(sleep) => Err(deadline_status()),
            response = sender.send_request(request) => Ok(response),
        };
        match result {
            Err(status) => Attempt::Final(status),
            Ok(Err(error)) => match poll_fn(|cx| Poll::Ready(abort.poll_abort(cx))).await {
                Poll::Ready(status) => Attempt::Final(status),
                Poll::Pending => {
                    let mut status = classify(&error, &self.label);
                    status.message = format!("{} ({})", status.message, picked.authority);
                    Attempt::Failed(status)
                }
            },
            Ok(Ok(response)) => Attempt::Answered(response),
        }
    }

    /// The upstream's answer, passed on with the reply headers: its body streamed, or its trailers-only
    /// status.
    fn respond(
        &self,
        mut guard: CallGuard,
        response: Response<Incoming>,
        sleep: Option<Pin<Box<Sleep>>>,
        abort: AbortSignal,
    ) -> Response<CallBody> {
        let (mut head, upstream) = response.into_parts();
        if head.status != StatusCode::OK {
            let code = status::code_for_http_status(head.status);
            let status = Status::new(
                code,
                format!("{} answered HTTP {}", self.label, head.status.as_u16()),
            );
            return self.fail(guard, status);
        }
        head.headers.remove(CONTENT_LENGTH);
        if let Some(code) = status::parse_grpc_status(&head.headers) {
            guard.code = Some(code);
            guard.cancel_request();
            if self.reply_headers.is_empty() {
                return Response::from_parts(head, CallBody::finished(guard));
            }
            // Trailers-only: its fields go back untouched as trailers, after headers that carry the reply
            // headers, which grpc clients would read as trailing metadata in a trailers-only reply.
            let mut trailers = std::mem::take(&mut head.headers);
            let content_type = trailers
                .remove(CONTENT_TYPE)
                .unwrap_or_else(|| APPLICATION_GRPC.clone());
            head.headers.insert(CONTENT_TYPE, content_type);
            metadata::append_all(&mut head.headers, &self.reply_headers);
            return Response::from_parts(
                head,
                CallBody::trailers_only_after_headers(guard, trailers),
            );
        }
        metadata::append_all(&mut head.headers, &self.reply_headers);
        let body = CallBody {
            upstream: Some(upstream),
            trailers: None,
            deadline: sleep,
            abort,
            counter: FrameCounter::new(None),
            label: self.label.clone(),
            guard,
            done: false,
        };
        Response::from_parts(head, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn caller_headers_that_pass() {
        let map = headers(&[
            ("x-api-key", "secret"),
            ("trace-bin", "AAE"),
            ("grpc-timeout", "5S"),
        ]);
        let (metadata, timeout) = check_caller_headers(&map, 8192).unwrap();
        assert_eq!(
            metadata[1],
            ("trace-bin".to_owned(), Value::Binary(vec![0, 1]))
        );
        assert_eq!(timeout, Some(Duration::from_secs(5)));
        let (_, timeout) = check_caller_headers(&headers(&[]), 8192).unwrap();
        assert_eq!(timeout, None);
    }

    #[test]
    fn metadata_over_the_limit_is_resource_exhausted() {
        let map = headers(&[("x-api-key", "secret")]);
        let size = 9 + 6 + 32;
        assert!(check_caller_headers(&map, size).is_ok());
        let status = check_caller_headers(&map, size - 1).unwrap_err();
        assert_eq!(status.code, status::RESOURCE_EXHAUSTED);
        assert_eq!(
            status.message,
            "the call's metadata is 47 bytes, over the gateway's limit of 46 bytes ([limits] max_metadata_bytes)"
        );
    }

    #[test]
    fn bad_base64_and_malformed_timeouts_are_refused() {
        let status =
            check_caller_headers(&headers(&[("x-trace-bin", "!!not*base64!!")]), 8192).unwrap_err();
        assert_eq!(
            status,
            Status::new(
                status::INVALID_ARGUMENT,
                "metadata x-trace-bin is not base64: a -bin header carries base64-encoded bytes"
            )
        );
        let status = check_caller_headers(&headers(&[("grpc-timeout", "soon")]), 8192).unwrap_err();
        assert_eq!(
            status,
            Status::new(
                status::INTERNAL,
                "grpc-timeout 'soon' is malformed: 1 to 8 digits and a unit (H, M, S, m, u, n)"
            )
        );
        // Too large comes first: nothing else of such a header block is looked at.
        let status = check_caller_headers(&headers(&[("grpc-timeout", "soon")]), 10).unwrap_err();
        assert_eq!(status.code, status::RESOURCE_EXHAUSTED);
    }
}
