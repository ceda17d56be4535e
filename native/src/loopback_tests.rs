//! The whole server on loopback, without Python: hyper HTTP/2 upstreams (one that echoes, one that fails
//! UNAVAILABLE while told to), the gateway with a Rust decider thread, and a hyper HTTP/2 client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use crate::decider::{EndingEvent, Event, Verdict};
use crate::metadata::to_header;
use crate::plan::{Plan, Route};
use crate::retry::RetryPolicy;
use crate::server::{Config, Server};
use crate::status::{Status, UNAUTHENTICATED};
use crate::upstream::{Address, ConnSettings, Pool};

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Echoes the request body, with `x-upstream` in the headers and grpc-status 0 in the trailers.
async fn echo(request: Request<Incoming>) -> Result<Response<EchoBody>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    trailers.insert("upstream-trailer-bin", HeaderValue::from_static("AAE"));
    let body = Full::new(body)
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
        .headers_mut()
        .insert("x-upstream", HeaderValue::from_static("echo"));
    Ok(response)
}

async fn upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service_fn(echo)),
            );
        }
    });
    port
}

fn message(payload: &[u8]) -> Bytes {
    let mut out = vec![0];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// Admits every call (its metadata forwarded) but those to `/t.E/Refuse*`; sends the endings to the test.
fn decide(server: Arc<Server>, endings: mpsc::Sender<EndingEvent>) {
    while let Some(events) = server.shared().queue.batch(Duration::from_millis(50)) {
        for event in events {
            match event {
                Event::Arrival(arrival) => {
                    let verdict = if arrival.method.starts_with("/t.E/Refuse") {
                        let headers = if arrival.method == "/t.E/RefuseWithHeaders" {
                            vec![(
                                "x-request-id".parse().unwrap(),
                                HeaderValue::from_static("r-1"),
                            )]
                        } else {
                            vec![]
                        };
                        Verdict::Refuse {
                            token: None,
                            status: Status::new(UNAUTHENTICATED, "no 100% sure"),
                            headers,
                            trailers: vec![(
                                "retry-after".parse().unwrap(),
                                HeaderValue::from_static("3"),
                            )],
                        }
                    } else {
                        Verdict::Admit {
                            token: None,
                            upstream_metadata: arrival
                                .metadata
                                .iter()
                                .filter_map(|(name, value)| to_header(name, value).ok())
                                .collect(),
                            reply_headers: vec![(
                                "x-gateway".parse().unwrap(),
                                HeaderValue::from_static("rust"),
                            )],
                        }
                    };
                    let _ = arrival.reply.send(verdict);
                }
                Event::Ending(ending) => {
                    let _ = endings.send(ending);
                }
            }
        }
    }
}

/// A server on a free loopback port (one I/O thread, small limits) serving `routes` from the upstream
/// `name` on `upstream_port`, and a thread deciding its calls ([`decide`]): the server, its port, the
/// calls' endings and the deciding thread, which ends once the server has stopped.
fn serve(
    routes: Vec<(&str, Route)>,
    name: &str,
    upstream_port: u16,
    reuse_port: bool,
) -> (
    Arc<Server>,
    u16,
    mpsc::Receiver<EndingEvent>,
    std::thread::JoinHandle<()>,
) {
    let server = Arc::new(Server::new(Config {
        host: "127.0.0.1".into(),
        port: 0,
        reuse_port,
        io_threads: 1,
        tls: None,
        max_concurrent_streams: 10,
        max_message_bytes: 1024,
        max_metadata_bytes: 8192,
        idle_timeout: Some(Duration::from_secs(5)),
        header_timeout: Some(Duration::from_secs(5)),
    }));
    let pool = Pool::new(
        vec![Address::Tcp {
            host: "127.0.0.1".into(),
            port: upstream_port,
        }],
        None,
        ConnSettings::default(),
    );
    server.shared().set_plan(Plan::new(
        routes
            .into_iter()
            .map(|(path, route)| (path.to_owned(), route))
            .collect(),
        HashMap::from([(name.to_owned(), Arc::new(pool))]),
    ));
    let port = server.start().unwrap();
    let (endings_tx, endings) = mpsc::channel();
    let decider = std::thread::spawn({
        let server = server.clone();
        move || decide(server, endings_tx)
    });
    (server, port, endings, decider)
}

#[test]
fn forwards_and_refuses_over_loopback() {
    let client_runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream_port = client_runtime.block_on(upstream());
    let route = Route {
        upstream: "echo".into(),
        service: "t.E".into(),
        client_streaming: false,
        server_streaming: false,
        reads_request: true,
        default_timeout: None,
        retry: None,
    };
    let (server, port, endings, decider) = serve(
        vec![("/t.E/Echo", route.clone()), ("/t.E/Refuse", route)],
        "echo",
        upstream_port,
        true,
    );

    client_runtime.block_on(async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = |path: &str, body: Bytes| {
            Request::post(format!("http://127.0.0.1:{port}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", "5S")
                .body(Full::new(body))
                .unwrap()
        };

        let body = [message(b"hello"), message(b"again")].concat();
        let response = sender
            .send_request(request("/t.E/Echo", Bytes::from(body.clone())))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-upstream"], "echo");
        assert_eq!(response.headers()["x-gateway"], "rust");
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["upstream-trailer-bin"], "AAE");
        assert_eq!(collected.to_bytes(), body);

        let response = sender
            .send_request(request("/t.E/Refuse", message(b"x")))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "16");
        assert_eq!(response.headers()["grpc-message"], "no 100%25 sure");
        assert_eq!(response.headers()["retry-after"], "3");
        assert!(response.into_body().is_end_stream());

        let response = sender
            .send_request(request("/t.E/Echo", message(&[0; 2000])))
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], "8");
    });

    let ending = endings.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (
            ending.method.as_str(),
            ending.code,
            ending.received,
            ending.sent
        ),
        ("/t.E/Echo", 0, 2, 2)
    );
    let ending = endings.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (
            ending.method.as_str(),
            ending.code,
            ending.received,
            ending.sent
        ),
        ("/t.E/Refuse", 16, 0, 0)
    );
    let ending = endings.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((ending.code, ending.received, ending.sent), (8, 0, 0));

    server.stop(Duration::from_millis(100));
    decider.join().unwrap();
    assert_eq!(
        server
            .shared()
            .active
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Answers trailers-only UNAVAILABLE (with `grpc-retry-pushback-ms` when the request has `x-pushback`) while
/// `failures` lasts, then echoes; notes each attempt's `grpc-previous-rpc-attempts` (or "-").
async fn flaky(
    request: Request<Incoming>,
    failures: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<String>>>,
) -> Result<Response<EchoBody>, Infallible> {
    let previous = request
        .headers()
        .get("grpc-previous-rpc-attempts")
        .map_or("-".to_owned(), |v| v.to_str().unwrap().to_owned());
    attempts.lock().unwrap().push(previous);
    let pushback = request.headers().get("x-pushback").cloned();
    let failing = failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if !failing {
        return echo(request).await;
    }
    let mut response = Response::new(Full::new(Bytes::new()).boxed());
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    headers.insert("grpc-message", HeaderValue::from_static("try again"));
    headers.insert("flaky-bin", HeaderValue::from_static("AP8"));
    if let Some(pushback) = pushback {
        headers.insert("grpc-retry-pushback-ms", pushback);
    }
    Ok(response)
}

struct Flaky {
    port: u16,
    failures: Arc<AtomicUsize>,
    attempts: Arc<Mutex<Vec<String>>>,
}

async fn flaky_upstream() -> Flaky {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let failures = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let (f, a) = (failures.clone(), attempts.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (f, a) = (f.clone(), a.clone());
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |request| flaky(request, f.clone(), a.clone())),
                ),
            );
        }
    });
    Flaky {
        port,
        failures,
        attempts,
    }
}

#[test]
fn answers_with_headers_first_and_retries_over_loopback() {
    let client_runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream = client_runtime.block_on(flaky_upstream());
    let retried = Route {
        upstream: "flaky".into(),
        service: "t.E".into(),
        client_streaming: false,
        server_streaming: false,
        reads_request: false,
        default_timeout: None,
        retry: Some(RetryPolicy::new(3, 0.01, 0.05, 2.0).unwrap()),
    };
    let once = Route {
        retry: None,
        ..retried.clone()
    };
    let (server, port, endings, decider) = serve(
        vec![
            ("/t.E/Retried", retried.clone()),
            ("/t.E/Once", once),
            ("/t.E/RefuseWithHeaders", retried),
        ],
        "flaky",
        upstream.port,
        false,
    );
    let attempts = |expected: &[&str]| {
        let seen = std::mem::take(&mut *upstream.attempts.lock().unwrap());
        assert_eq!(seen, expected);
    };

    client_runtime.block_on(async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = |path: &str, pushback: Option<&'static str>| {
            let mut builder = Request::post(format!("http://127.0.0.1:{port}{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("grpc-timeout", "5S");
            if let Some(pushback) = pushback {
                builder = builder.header("x-pushback", pushback);
            }
            builder.body(Full::new(message(b"hello"))).unwrap()
        };

        // A refusal with headers: HEADERS without a status, then the trailers.
        let response = sender
            .send_request(request("/t.E/RefuseWithHeaders", None))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], "r-1");
        assert!(response.headers().get("grpc-status").is_none());
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap();
        assert_eq!(trailers["grpc-status"], "16");
        assert_eq!(trailers["retry-after"], "3");
        assert!(trailers.get("x-request-id").is_none());
        assert!(collected.to_bytes().is_empty());

        // One failure, then the second attempt answers.
        upstream.failures.store(1, Ordering::SeqCst);
        let response = sender
            .send_request(request("/t.E/Retried", None))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-gateway"], "rust");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), message(b"hello"));
        attempts(&["-", "1"]);

        // Failures all the way: three attempts, the last one's answer passed on as trailers, untouched.
        upstream.failures.store(10, Ordering::SeqCst);
        let response = sender
            .send_request(request("/t.E/Retried", None))
            .await
            .unwrap();
        assert_eq!(response.headers()["x-gateway"], "rust");
        assert!(response.headers().get("grpc-status").is_none());
        let trailers = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .trailers()
            .cloned()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers["grpc-message"], "try again");
        assert_eq!(trailers["flaky-bin"], "AP8");
        attempts(&["-", "1", "2"]);

        // The server's pushback forbids a retry; a method without a policy is not retried.
        upstream.failures.store(10, Ordering::SeqCst);
        for (path, pushback) in [("/t.E/Retried", Some("-1")), ("/t.E/Once", None)] {
            let response = sender.send_request(request(path, pushback)).await.unwrap();
            let trailers = response
                .into_body()
                .collect()
                .await
                .unwrap()
                .trailers()
                .cloned()
                .unwrap();
            assert_eq!(trailers["grpc-status"], "14");
            attempts(&["-"]);
        }
    });

    let codes: Vec<u32> = (0..5)
        .map(|_| endings.recv_timeout(Duration::from_secs(5)).unwrap().code)
        .collect();
    assert_eq!(codes, [16, 0, 14, 14, 14]);
    server.stop(Duration::from_millis(100));
    decider.join().unwrap();
}
