//! The listener and its connections: a socket2 listener (SO_REUSEADDR, SO_REUSEPORT when asked, backlog
//! 1024), optional TLS, one task per connection serving HTTP/2 with hyper under the configured limits,
//! closing idle connections and those that never send a request (slowloris), and closing each connection
//! so that the client reads its GOAWAY; drain and stop.

use std::convert::Infallible;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};
use tokio_rustls::TlsAcceptor;

use crate::decider::Queue;
use crate::forward::{self, ConnState, Shared};
use crate::metadata::format_peer;

const BACKLOG: i32 = 1024;
/// How long a connection closed for being idle may take to finish its goodbye before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long a closed connection is still read (and what comes discarded), after its last write.
const LINGER: Duration = Duration::from_secs(2);
/// The header list size HTTP/2 itself enforces, as a multiple of the gateway's metadata limit, and its bounds.
const HEADER_CEILING_FACTOR: u32 = 16;
const HEADER_CEILING_MIN: u32 = 64 << 10;
const HEADER_CEILING_MAX: u32 = 1 << 20;
/// Streams a client may open and reset before the server has taken them up, per connection (the HTTP/2
/// "rapid reset" attack): past it the connection is closed with GOAWAY ENHANCE_YOUR_CALM.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 50;
/// Streams the server may reset for a client's protocol errors, per connection, before it closes it.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// Everything the listener is configured with.
#[derive(Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub reuse_port: bool,
    pub io_threads: usize,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_concurrent_streams: u32,
    pub max_message_bytes: u64,
    pub max_metadata_bytes: u32,
    /// None: idle connections are kept.
    pub idle_timeout: Option<Duration>,
    /// None: no limit on the time to the first request.
    pub header_timeout: Option<Duration>,
}

struct Running {
    runtime: Runtime,
    shutdown: watch::Sender<bool>,
}

/// What each connection task needs.
struct ConnContext {
    shared: Arc<Shared>,
    builder: http2::Builder<TokioExecutor>,
    tls: Option<TlsAcceptor>,
    idle_timeout: Option<Duration>,
    header_timeout: Option<Duration>,
}

pub struct Server {
    config: Config,
    shared: Arc<Shared>,
    running: Mutex<Option<Running>>,
}

impl Server {
    pub fn new(config: Config) -> Server {
        let shared = Arc::new(Shared::new(
            config.max_message_bytes,
            u64::from(config.max_metadata_bytes),
        ));
        Server {
            config,
            shared,
            running: Mutex::new(None),
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds, starts the runtime and the accept loop; returns the bound port. The error names host:port.
    pub fn start(&self) -> io::Result<u16> {
        let mut running = self.running();
        if running.is_some() || self.shared.queue.is_closed() {
            return Err(io::Error::other("the server was already started"));
        }
        let name = format!("{}:{}", self.config.host, self.config.port);
        let named =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot listen on {name}: {e}"));
        let listener = bind(&self.config).map_err(named)?;
        let port = listener.local_addr().map_err(named)?.port();
        let shared = self.shared.clone();
        // Each worker rings the queue's bell as it goes idle (`Queue::idle`); a worker is marked as
        // one when it first wakes (the blocking pool's threads never park, so they ring at once).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.config.io_threads.max(1))
            .thread_name("gateway-io")
            .on_thread_unpark(Queue::rings_when_idle)
            .on_thread_park(move || shared.queue.idle())
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener).map_err(named)?
        };
        let (shutdown, watch_rx) = watch::channel(false);
        let context = Arc::new(ConnContext {
            shared: self.shared.clone(),
            builder: server_builder(&self.config),
            tls: self.config.tls.clone().map(TlsAcceptor::from),
            idle_timeout: self.config.idle_timeout,
            header_timeout: self.config.header_timeout,
        });
        runtime.spawn(accept_loop(listener, context, watch_rx));
        *running = Some(Running { runtime, shutdown });
        Ok(port)
    }

    /// New calls are refused at once from now on.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// Stops accepting, lets calls in flight finish for up to `grace`, then cancels the rest and shuts the
    /// runtime down. Blocks. The queue is closed after: `next_batch` returns None once it is empty.
    pub fn stop(&self, grace: Duration) {
        let running = self.running().take();
        if let Some(running) = running {
            self.shared.draining.store(true, Ordering::SeqCst);
            let _ = running.shutdown.send(true);
            let until = std::time::Instant::now() + grace;
            while self.shared.active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < until
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            running.runtime.shutdown_timeout(Duration::from_secs(2));
        }
        self.shared.queue.close();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(running) = self.running().take() {
            running.runtime.shutdown_background();
        }
        self.shared.queue.close();
    }
}

fn bind(config: &Config) -> io::Result<std::net::TcpListener> {
    let address: SocketAddr = (config.host.as_str(), config.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the host has no address"))?;
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if config.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The header list size HTTP/2 enforces (and advertises): well above the gateway's own limit, so that
/// metadata over that limit reaches the check that answers it with a gRPC status (HTTP/2's own answer is
/// an HTTP 431 that clients see as UNKNOWN), while a header block past even this is still cut by HTTP/2
/// (431, or GOAWAY ENHANCE_YOUR_CALM for one far past it).
pub fn header_list_ceiling(max_metadata_bytes: u32) -> u32 {
    max_metadata_bytes
        .saturating_mul(HEADER_CEILING_FACTOR)
        .clamp(HEADER_CEILING_MIN, HEADER_CEILING_MAX)
}

fn server_builder(config: &Config) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .auto_date_header(false)
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(header_list_ceiling(config.max_metadata_bytes))
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS)
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20))
        .adaptive_window(false)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(2 << 20);
    builder
}

async fn accept_loop(
    listener: TcpListener,
    context: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection(stream, peer, context.clone(), shutdown.clone()));
                }
                // Out of file descriptors and the like: wait a little rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    context: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    let first_by = context
        .header_timeout
        .map(|timeout| Instant::now() + timeout);
    let peer: Arc<str> = format_peer(&peer).into();
    let stream = Lingering(Some(stream));
    match &context.tls {
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            let accepted = match first_by {
                Some(deadline) => tokio::time::timeout_at(deadline, handshake).await.ok(),
                None => Some(handshake.await),
            };
            if let Some(Ok(stream)) = accepted {
                serve(TokioIo::new(stream), peer, context, shutdown, first_by).await;
            }
        }
        None => serve(TokioIo::new(stream), peer, context, shutdown, first_by).await,
    }
}

async fn serve<IO>(
    io: TokioIo<IO>,
    peer: Arc<str>,
    context: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
    first_by: Option<Instant>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let state = Arc::new(ConnState::default());
    let service = {
        let shared = context.shared.clone();
        let state = state.clone();
        service_fn(move |request| {
            let (shared, state, peer) = (shared.clone(), state.clone(), peer.clone());
            async move { Ok::<_, Infallible>(forward::handle(request, shared, state, peer).await) }
        })
    };
    let connection = context.builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut stopping = false;
    let mut closing_until: Option<Instant> = None;
    loop {
        let wake = if let Some(until) = closing_until {
            Some(until)
        } else if !state.had_stream() {
            first_by
        } else if state.open_streams() == 0 {
            context.idle_timeout.map(|idle| state.idle_since() + idle)
        } else {
            // Busy: woken when the last stream closes.
            None
        };
        tokio::select! {
            _ = connection.as_mut() => return,
            () = state.changed.notified(), if closing_until.is_none() => {}
            () = sleep_until_some(wake) => {
                if closing_until.is_some() {
                    return;
                }
                let now = Instant::now();
                if !state.had_stream() {
                    if first_by.is_some_and(|by| now >= by) {
                        // No request in time: a slowloris, or a client that only holds a connection.
                        return;
                    }
                } else if state.open_streams() == 0
                    && context.idle_timeout.is_some_and(|idle| now >= state.idle_since() + idle)
                {
                    connection.as_mut().graceful_shutdown();
                    closing_until = Some(now + CLOSE_GRACE);
                }
            }
            changed = shutdown.changed(), if !stopping => {
                if changed.is_err() || *shutdown.borrow() {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A client's connection that, once dropped, is shut for writing and still read (what comes discarded)
/// for a while before it is closed: closing a socket with unread bytes from the client makes the kernel
/// send a reset, which can destroy the GOAWAY still on its way to the client and fails the client's next
/// write, where the client should read the GOAWAY and the end of the connection.
struct Lingering(Option<TcpStream>);

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl AsyncRead for Lingering {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().0.as_mut() {
            Some(stream) => Pin::new(stream).poll_read(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().0.as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().0.as_mut() {
            Some(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().0.as_mut() {
            Some(stream) => Pin::new(stream).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().0.as_mut() {
            Some(stream) => Pin::new(stream).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(stream) = self.0.take() else {
            return;
        };
        // Outside the runtime (it is shutting down) the socket is simply closed.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(stream));
        }
    }
}

async fn linger(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut discard = vec![0; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(read) = stream.read(&mut discard).await {
            if read == 0 {
                break;
            }
        }
    })
    .await;
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_ceiling_is_16_times_the_limit_within_bounds() {
        assert_eq!(header_list_ceiling(8192), 128 << 10);
        assert_eq!(header_list_ceiling(1024), 64 << 10);
        assert_eq!(header_list_ceiling(1 << 20), 1 << 20);
        assert_eq!(header_list_ceiling(u32::MAX), 1 << 20);
        // A 100 KB header reaches the gateway's own check under the default limit.
        assert!(header_list_ceiling(8192) > 100_000 + 9 + 32);
    }
}
