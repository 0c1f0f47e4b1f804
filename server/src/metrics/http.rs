//! The Prometheus endpoint: HTTP/1.1 on `--metrics-listen`, `GET /metrics` only.
//!
//! Bounded like the gRPC port: at most [`METRICS_CONNECTIONS_MAX`] connections at once (more
//! wait in the listen backlog), request headers must arrive within
//! [`METRICS_HEADER_READ_TIMEOUT`], and a connection lives at most
//! [`METRICS_CONNECTION_LIFETIME_MAX`] (a scraper reconnects).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header;
use hyper::http;
use hyper::Method;
use hyper::Request;
use hyper::Response;
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use hyper_util::rt::TokioTimer;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::Metrics;
use super::Shutdown;

/// Connections the metrics endpoint serves at once; further ones wait to be accepted.
pub const METRICS_CONNECTIONS_MAX: usize = 8;
/// How long a client may take to send a request's headers (also bounds an idle keep-alive).
pub const METRICS_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a metrics connection stays open; then it is closed after its current answer.
pub const METRICS_CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(60);
/// How long a connection may take to finish its answer once asked to close.
const METRICS_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// The path scrapes are answered on.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the Prometheus text format 0.0.4.
const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Binds `--metrics-listen` (nothing when unset). Called before Raft starts, like the gRPC
/// listener: a port clash fails fast.
pub async fn bind(address: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = address else { return Ok(None) };
    let listener = TcpListener::bind(address).await.with_context(|| format!("binding --metrics-listen {address}"))?;
    Ok(Some(listener))
}

/// Serves `metrics` on `listener` until `shutdown`; the returned task ends once every
/// connection closed.
pub fn serve(listener: Option<TcpListener>, metrics: Arc<Metrics>, shutdown: Shutdown) -> Option<JoinHandle<()>> {
    let listener = listener?;
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving Prometheus metrics on {METRICS_PATH}");
    }
    Some(tokio::spawn(accept_loop(listener, metrics, shutdown)))
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(METRICS_CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            _ = shutdown.signal() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accepting a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.signal() => break,
        };
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, metrics, shutdown).await;
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

async fn serve_connection(stream: TcpStream, metrics: Arc<Metrics>, shutdown: Shutdown) {
    let service = hyper::service::service_fn(move |request| {
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(answer(&metrics, &request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(METRICS_HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "metrics connection ended");
            }
            return;
        }
        _ = shutdown.signal() => {}
        _ = tokio::time::sleep(METRICS_CONNECTION_LIFETIME_MAX) => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(METRICS_CLOSE_GRACE, connection).await;
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

async fn answer<B>(metrics: &Arc<Metrics>, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.uri().path() != METRICS_PATH {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are served on GET /metrics\n");
    }
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET\n");
        response.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("GET"));
        return response;
    }
    // Sampling reads sled (retention index, record counts): keep it off the async workers.
    let metrics = metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(Ok(text)) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "encoding metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n")
        }
        Err(error) => {
            tracing::warn!(%error, "encoding metrics");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed\n")
        }
    }
}
