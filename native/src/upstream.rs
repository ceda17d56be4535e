//! The upstream pools: per upstream its addresses, per address one multiplexed HTTP/2 connection, made on
//! first use and again when it closes; a failed connect puts the address in backoff (x1.6 per failure, up to
//! a maximum, reset on success); calls go round-robin over the addresses not in backoff.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::forward::UpstreamBody;
use crate::retry::Throttle;

/// How long one connect (TCP, TLS and the HTTP/2 handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_FACTOR: f64 = 1.6;

/// Where an upstream listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Tcp { host: String, port: u16 },
    Unix(PathBuf),
}

impl Address {
    /// `host:port`, `[v6]:port` or `unix:/path`.
    pub fn parse(text: &str) -> Result<Address, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("{text:?} names no socket path"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?} has no valid port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        Ok(Address::Tcp {
            host: host.to_owned(),
            port,
        })
    }

    /// The `:authority` of requests sent there.
    pub fn authority(&self) -> String {
        match self {
            Address::Tcp { host, port } if host.contains(':') => format!("[{host}]:{port}"),
            Address::Tcp { host, port } => format!("{host}:{port}"),
            Address::Unix(_) => "localhost".to_owned(),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { .. } => f.write_str(&self.authority()),
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// How upstream connections are kept and retried.
#[derive(Clone, Debug)]
pub struct ConnSettings {
    /// Idle time before an HTTP/2 PING; None: no keepalive pings.
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub keepalive_while_idle: bool,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for ConnSettings {
    fn default() -> Self {
        ConnSettings {
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(20),
            keepalive_while_idle: false,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(120),
        }
    }
}

/// An upstream's TLS: the client configuration and the name to verify ("" = the address's host).
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    pub server_name: String,
}

struct SlotState {
    conn: Option<SendRequest<UpstreamBody>>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_error: String,
}

struct Slot {
    address: Address,
    state: Mutex<SlotState>,
}

/// A connection picked for one call.
pub struct Picked {
    pub sender: SendRequest<UpstreamBody>,
    pub authority: String,
    pub scheme: &'static str,
}

/// One upstream's connections.
pub struct Pool {
    slots: Vec<Slot>,
    next: AtomicUsize,
    tls: Option<UpstreamTls>,
    settings: ConnSettings,
    /// The retry throttling of the calls to this upstream that may be retried.
    pub throttle: Throttle,
}

impl Pool {
    pub fn new(addresses: Vec<Address>, tls: Option<UpstreamTls>, settings: ConnSettings) -> Pool {
        let slots = addresses
            .into_iter()
            .map(|address| Slot {
                address,
                state: Mutex::new(SlotState {
                    conn: None,
                    retry_at: None,
                    backoff: settings.backoff_initial,
                    last_error: String::new(),
                }),
            })
            .collect();
        Pool {
            slots,
            next: AtomicUsize::new(0),
            tls,
            settings,
            throttle: Throttle::default(),
        }
    }

    /// A connection for the next call: round-robin over the addresses, skipping those in backoff; connects
    /// when the address has no open connection. `Err(reason)` when none can be had now.
    pub async fn pick(&self) -> Result<Picked, String> {
        if self.slots.is_empty() {
            return Err("it has no addresses".to_owned());
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut reason = String::new();
        for i in 0..self.slots.len() {
            let slot = &self.slots[(start + i) % self.slots.len()];
            let mut state = slot.state.lock().await;
            if let Some(conn) = &state.conn {
                if !conn.is_closed() {
                    return Ok(self.picked(slot, conn.clone()));
                }
                state.conn = None;
            }
            let now = Instant::now();
            if let Some(retry_at) = state.retry_at {
                if now < retry_at {
                    if reason.is_empty() {
                        reason = state.last_error.clone();
                    }
                    continue;
                }
            }
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect(&slot.address)).await {
                Ok(Ok(conn)) => {
                    state.conn = Some(conn.clone());
                    state.retry_at = None;
                    state.backoff = self.settings.backoff_initial;
                    state.last_error.clear();
                    return Ok(self.picked(slot, conn));
                }
                result => {
                    let error = match result {
                        Ok(Err(error)) => error,
                        _ => format!("connect timed out after {} s", CONNECT_TIMEOUT.as_secs()),
                    };
                    state.last_error = format!("{error} ({})", slot.address);
                    state.retry_at = Some(now + state.backoff);
                    state.backoff = state
                        .backoff
                        .mul_f64(BACKOFF_FACTOR)
                        .min(self.settings.backoff_max);
                    reason = state.last_error.clone();
                }
            }
        }
        Err(reason)
    }

    fn picked(&self, slot: &Slot, sender: SendRequest<UpstreamBody>) -> Picked {
        Picked {
            sender,
            authority: slot.address.authority(),
            scheme: if self.tls.is_some() { "https" } else { "http" },
        }
    }

    async fn connect(&self, address: &Address) -> Result<SendRequest<UpstreamBody>, String> {
        match address {
            Address::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| describe_io(&e))?;
                let _ = stream.set_nodelay(true);
                match &self.tls {
                    Some(tls) => {
                        let name = if tls.server_name.is_empty() {
                            host.as_str()
                        } else {
                            tls.server_name.as_str()
                        };
                        let name = ServerName::try_from(name.to_owned())
                            .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))?;
                        let stream = TlsConnector::from(tls.config.clone())
                            .connect(name, stream)
                            .await
                            .map_err(|e| format!("TLS handshake failed: {e}"))?;
                        self.handshake(stream).await
                    }
                    None => self.handshake(stream).await,
                }
            }
            Address::Unix(path) => {
                let stream = UnixStream::connect(path)
                    .await
                    .map_err(|e| describe_io(&e))?;
                self.handshake(stream).await
            }
        }
    }

    async fn handshake<IO>(&self, io: IO) -> Result<SendRequest<UpstreamBody>, String>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .adaptive_window(false)
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(2 << 20)
            .max_header_list_size(1 << 20);
        if let Some(interval) = self.settings.keepalive_interval {
            builder
                .keep_alive_interval(interval)
                .keep_alive_timeout(self.settings.keepalive_timeout)
                .keep_alive_while_idle(self.settings.keepalive_while_idle);
        }
        let (sender, conn) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP/2 handshake failed: {e}"))?;
        tokio::spawn(async move {
            // The connection ends when the upstream closes it or when every SendRequest is gone.
            let _ = conn.await;
        });
        Ok(sender)
    }
}

/// An I/O error as a short reason: "connection refused", "connection reset", ...
fn describe_io(error: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match error.kind() {
        ConnectionRefused => "connection refused".to_owned(),
        ConnectionReset => "connection reset".to_owned(),
        TimedOut => "connect timed out".to_owned(),
        NotFound => "no such socket".to_owned(),
        PermissionDenied => "permission denied".to_owned(),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            Address::parse("127.0.0.1:50051").unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 50051
            }
        );
        assert_eq!(
            Address::parse("[::1]:7").unwrap(),
            Address::Tcp {
                host: "::1".into(),
                port: 7
            }
        );
        assert_eq!(
            Address::parse("unix:/tmp/u.sock").unwrap(),
            Address::Unix("/tmp/u.sock".into())
        );
        assert_eq!(Address::parse("[::1]:7").unwrap().authority(), "[::1]:7");
        assert_eq!(
            Address::parse("unix:/tmp/u.sock").unwrap().authority(),
            "localhost"
        );
        assert_eq!(
            Address::parse("unix:/tmp/u.sock").unwrap().to_string(),
            "unix:/tmp/u.sock"
        );
        for bad in ["nohost", "h:port", ":80", "unix:", "h:70000"] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn refused_then_backoff_fails_fast() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let settings = ConnSettings {
            backoff_initial: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
            ..ConnSettings::default()
        };
        let pool = Pool::new(
            vec![Address::Tcp {
                host: "127.0.0.1".into(),
                port,
            }],
            None,
            settings,
        );
        let first = pool.pick().await.err().unwrap();
        assert_eq!(first, format!("connection refused (127.0.0.1:{port})"));
        let started = std::time::Instant::now();
        let second = pool.pick().await.err().unwrap();
        assert_eq!(second, first);
        assert!(started.elapsed() < Duration::from_millis(50));
        let state = pool.slots[0].state.lock().await;
        assert_eq!(state.backoff, Duration::from_secs(48));
    }
}
