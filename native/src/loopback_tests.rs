//! The whole server on loopback, without Python: a hyper HTTP/2 upstream that echoes, the gateway with a Rust
//! decider thread, and a hyper HTTP/2 client.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{mpsc, Arc};
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
use crate::plan::{Plan, Route};
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

/// Admits every call but those to `/t.E/Refuse`; sends the endings to the test.
fn decide(server: Arc<Server>, endings: mpsc::Sender<EndingEvent>) {
    while let Some(events) = server.shared().queue.batch(Duration::from_millis(50)) {
        for event in events {
            match event {
                Event::Arrival(arrival) => {
                    let verdict = if arrival.method == "/t.E/Refuse" {
                        Verdict::Refuse {
                            token: None,
                            status: Status::new(UNAUTHENTICATED, "no 100% sure"),
                            headers: vec![],
                            trailers: vec![(
                                "retry-after".parse().unwrap(),
                                HeaderValue::from_static("3"),
                            )],
                        }
                    } else {
                        Verdict::Admit {
                            token: None,
                            upstream_metadata: vec![],
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

#[test]
fn forwards_and_refuses_over_loopback() {
    let client_runtime = tokio::runtime::Runtime::new().unwrap();
    let upstream_port = client_runtime.block_on(upstream());
    let server = Arc::new(Server::new(Config {
        host: "127.0.0.1".into(),
        port: 0,
        reuse_port: true,
        io_threads: 1,
        tls: None,
        max_concurrent_streams: 10,
        max_message_bytes: 1024,
        max_metadata_bytes: 8192,
        idle_timeout: Some(Duration::from_secs(5)),
        header_timeout: Some(Duration::from_secs(5)),
    }));
    let route = Route {
        upstream: "echo".into(),
        service: "t.E".into(),
        client_streaming: false,
        server_streaming: false,
        reads_request: true,
        default_timeout: None,
    };
    let pool = Pool::new(
        vec![Address::Tcp {
            host: "127.0.0.1".into(),
            port: upstream_port,
        }],
        None,
        ConnSettings::default(),
    );
    server.shared().set_plan(Plan::new(
        HashMap::from([
            ("/t.E/Echo".to_owned(), route.clone()),
            ("/t.E/Refuse".to_owned(), route),
        ]),
        HashMap::from([("echo".to_owned(), Arc::new(pool))]),
    ));
    let port = server.start().unwrap();
    let (endings_tx, endings) = mpsc::channel();
    let decider = std::thread::spawn({
        let server = server.clone();
        move || decide(server, endings_tx)
    });

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
