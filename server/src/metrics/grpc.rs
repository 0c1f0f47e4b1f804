//! Requests and latency of every gRPC call on the port, by service, method and status code: a
//! tower layer on the tonic server builder, so it sees the client API, the admin API, the Raft
//! peer transport, health and reflection alike.
//!
//! The code is the one the client reads:
//! - a failed unary call is usually answered "trailers-only": `grpc-status` is in the response
//!   headers, and the call is recorded when the headers go out;
//! - otherwise the response body is wrapped and the code read from `grpc-status` in the
//!   trailers, recorded when they go out;
//! - a body that ends without trailers is UNKNOWN (what a client reports for a missing status);
//! - a call dropped before its status went out (the client cancelled or its deadline passed,
//!   which tonic answers CANCELLED) is CANCELLED;
//! - an HTTP error status without `grpc-status` maps as gRPC's HTTP-to-code table says.
//!
//! Label sets are fixed at start from the descriptor sets of the services this binary can serve
//! (`dedup.v1`, `grpc.health.v1`, `grpc.reflection.*`): a call is one hash lookup of its path in
//! an immutable table, then relaxed atomic adds. Any other path counts as service and method
//! `unknown`, so a client cannot grow the label space.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Instant;

use dedup_cluster::metrics::HistogramSnapshot;
use dedup_cluster::metrics::LatencyHistogram;
use hyper::body::Body;
use hyper::body::Frame;
use hyper::body::SizeHint;
use hyper::http;
use hyper::HeaderMap;
use prost::Message;
use tonic::codegen::Service;
use tonic::Code;

/// gRPC status code names (label `code`), indexed by code number.
pub const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Service and method label of a path not in the table.
pub const UNKNOWN: &str = "unknown";

/// The few fields of `google.protobuf.FileDescriptorSet` the method table needs (prost skips
/// the rest), so no descriptor library is needed.
mod descriptor {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        pub file: Vec<FileDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileDescriptorProto {
        #[prost(string, optional, tag = "2")]
        pub package: Option<String>,
        #[prost(message, repeated, tag = "6")]
        pub service: Vec<ServiceDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ServiceDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(message, repeated, tag = "2")]
        pub method: Vec<MethodDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct MethodDescriptorProto {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
    }
}

/// `(service, method)` of every method in the encoded `FileDescriptorSet`s.
pub fn methods_of(descriptor_sets: &[&[u8]]) -> Vec<(String, String)> {
    let mut methods = Vec::new();
    for encoded in descriptor_sets {
        let Ok(set) = descriptor::FileDescriptorSet::decode(*encoded) else {
            tracing::warn!("a gRPC descriptor set does not decode; its methods count as unknown");
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                let service_name = if package.is_empty() { name } else { format!("{package}.{name}") };
                for method in service.method {
                    methods.push((service_name.clone(), method.name.unwrap_or_default()));
                }
            }
        }
    }
    methods
}

/// The descriptor sets of every service dedupd may serve on its gRPC port.
pub fn served_descriptor_sets() -> [&'static [u8]; 4] {
    [
        dedup_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
}

#[derive(Debug)]
struct MethodStats {
    service: String,
    method: String,
    /// Calls by status code number.
    codes: [AtomicU64; CODE_NAMES.len()],
    latency: LatencyHistogram,
}

/// One method's counts at scrape time.
#[derive(Debug, Clone)]
pub struct MethodCounts {
    pub service: String,
    pub method: String,
    /// `(code name, calls)` for OK and every code seen.
    pub codes: Vec<(&'static str, u64)>,
    pub latency: HistogramSnapshot,
}

#[derive(Debug)]
pub struct GrpcMetrics {
    /// `/package.Service/Method` -> index in `methods`. Never changes after start.
    paths: HashMap<Box<str>, usize>,
    /// The known methods, then the `unknown` one last.
    methods: Vec<MethodStats>,
}

impl GrpcMetrics {
    pub fn new(methods: Vec<(String, String)>) -> GrpcMetrics {
        let mut paths = HashMap::new();
        let mut stats = Vec::new();
        let entries = methods.into_iter().chain(std::iter::once((UNKNOWN.to_string(), UNKNOWN.to_string())));
        for (service, method) in entries {
            let path = format!("/{service}/{method}").into_boxed_str();
            if paths.contains_key(&path) {
                continue;
            }
            paths.insert(path, stats.len());
            stats.push(MethodStats { service, method, codes: Default::default(), latency: LatencyHistogram::new() });
        }
        GrpcMetrics { paths, methods: stats }
    }

    fn method_of(&self, path: &str) -> usize {
        self.paths.get(path).copied().unwrap_or(self.methods.len() - 1)
    }

    fn record(&self, method: usize, code: Code, started: Instant) {
        let stats = &self.methods[method];
        let code =
            usize::try_from(code as i32).ok().filter(|c| *c < CODE_NAMES.len()).unwrap_or(Code::Unknown as usize);
        stats.codes[code].fetch_add(1, Ordering::Relaxed);
        stats.latency.observe(started.elapsed());
    }

    /// Methods called at least once since start.
    pub fn counts(&self) -> Vec<MethodCounts> {
        let mut counts = Vec::new();
        for stats in &self.methods {
            let calls: Vec<u64> = stats.codes.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            if calls.iter().all(|n| *n == 0) {
                continue;
            }
            let codes = CODE_NAMES
                .iter()
                .zip(&calls)
                .enumerate()
                .filter(|(code, (_, n))| *code == Code::Ok as usize || **n > 0)
                .map(|(_, (name, n))| (*name, *n))
                .collect();
            counts.push(MethodCounts {
                service: stats.service.clone(),
                method: stats.method.clone(),
                codes,
                latency: stats.latency.snapshot(),
            });
        }
        counts
    }
}

/// The layer for `tonic::transport::Server::builder().layer(...)`.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Arc<GrpcMetrics>,
}

impl GrpcMetricsLayer {
    pub fn new(metrics: Arc<GrpcMetrics>) -> GrpcMetricsLayer {
        GrpcMetricsLayer { metrics }
    }
}

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

/// One call being measured. Recorded exactly once: by [`Call::finish`], or as CANCELLED when
/// dropped unfinished (the response future or body went away before the status went out).
struct Call {
    metrics: Arc<GrpcMetrics>,
    method: usize,
    started: Instant,
    finished: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if !self.finished {
            self.finished = true;
            self.metrics.record(self.method, code, self.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers.get("grpc-status").map(|value| Code::from_bytes(value.as_bytes()))
}

/// gRPC's mapping of an HTTP status without `grpc-status` (doc/http-grpc-status-mapping.md).
fn code_of_http_status(status: http::StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502..=504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut call = Call {
            method: self.metrics.method_of(request.uri().path()),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            finished: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let code = grpc_status(response.headers()).or_else(|| {
                (response.status() != http::StatusCode::OK).then(|| code_of_http_status(response.status()))
            });
            let call = match code {
                // Trailers-only (or not a gRPC answer at all): the status is known now.
                Some(code) => {
                    call.finish(code);
                    None
                }
                None => Some(call),
            };
            Ok(response.map(|body| MeteredBody { inner: body, call }))
        })
    }
}

/// A response body that records its call when the trailers carrying `grpc-status` go out.
pub struct MeteredBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B> Body for MeteredBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Some(call) = this.call.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        call.finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                    }
                }
                Poll::Ready(Some(Err(_))) => call.finish(Code::Unknown),
                Poll::Ready(None) => call.finish(Code::Unknown),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_holds_every_served_method_and_an_unknown_one() {
        let metrics = GrpcMetrics::new(methods_of(&served_descriptor_sets()));
        let known = |path: &str| metrics.method_of(path) != metrics.methods.len() - 1;
        assert!(known("/dedup.v1.Ledger/CheckAndClaim"));
        assert!(known("/dedup.v1.Admin/NodeStatus"));
        assert!(known("/dedup.v1.RaftPeer/AppendEntries"));
        assert!(known("/grpc.health.v1.Health/Check"));
        assert!(known("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(!known("/dedup.v1.Ledger/NoSuchMethod"));
        assert!(!known("/metrics"));
    }

    /// A body of fixed frames.
    struct Frames(std::collections::VecDeque<Frame<hyper::body::Bytes>>);

    impl Body for Frames {
        type Data = hyper::body::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    /// A service that answers every call with `answer()`.
    #[derive(Clone)]
    struct Answering(fn() -> http::Response<Frames>);

    impl Service<http::Request<()>> for Answering {
        type Response = http::Response<Frames>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            std::future::ready(Ok((self.0)()))
        }
    }

    fn trailers(code: &'static str) -> Frame<hyper::body::Bytes> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(code));
        Frame::trailers(trailers)
    }

    fn unary_ok() -> http::Response<Frames> {
        let data = Frame::data(hyper::body::Bytes::from_static(b"\0\0\0\0\0"));
        http::Response::new(Frames([data, trailers("0")].into()))
    }

    fn trailers_only_not_found() -> http::Response<Frames> {
        let mut response = http::Response::new(Frames(Default::default()));
        response.headers_mut().insert("grpc-status", http::HeaderValue::from_static("5"));
        response
    }

    fn codes_of(metrics: &GrpcMetrics) -> Vec<(String, &'static str, u64)> {
        let mut codes = Vec::new();
        for method in metrics.counts() {
            for (code, n) in method.codes.iter().filter(|(_, n)| *n > 0) {
                codes.push((format!("{}/{}", method.service, method.method), *code, *n));
            }
        }
        codes
    }

    async fn call(layer: &GrpcMetricsLayer, answer: fn() -> http::Response<Frames>, path: &str, drain: bool) {
        use http_body_util::BodyExt;
        let mut service = tower_layer::Layer::layer(layer, Answering(answer));
        let request = http::Request::builder().uri(path).body(()).unwrap();
        let response = service.call(request).await.unwrap();
        if drain {
            response.into_body().collect().await.unwrap();
        }
    }

    #[tokio::test]
    async fn the_code_comes_from_trailers_or_trailers_only_headers_and_a_dropped_call_is_cancelled() {
        let metrics = Arc::new(GrpcMetrics::new(vec![("s.S".to_string(), "M".to_string())]));
        let layer = GrpcMetricsLayer::new(metrics.clone());
        call(&layer, unary_ok, "/s.S/M", false).await;
        assert_eq!(codes_of(&metrics), vec![("s.S/M".to_string(), "CANCELLED", 1)], "body dropped unread");
        call(&layer, unary_ok, "/s.S/M", true).await;
        call(&layer, trailers_only_not_found, "/s.S/M", false).await;
        call(&layer, trailers_only_not_found, "/other.Service/X", true).await;
        assert_eq!(
            codes_of(&metrics),
            vec![
                ("s.S/M".to_string(), "OK", 1),
                ("s.S/M".to_string(), "CANCELLED", 1),
                ("s.S/M".to_string(), "NOT_FOUND", 1),
                ("unknown/unknown".to_string(), "NOT_FOUND", 1),
            ]
        );
    }

    #[test]
    fn codes_are_counted_by_name_and_ok_is_always_shown() {
        let metrics = GrpcMetrics::new(vec![("s.S".to_string(), "M".to_string())]);
        let method = metrics.method_of("/s.S/M");
        metrics.record(method, Code::NotFound, Instant::now());
        metrics.record(method, Code::NotFound, Instant::now());
        let counts = metrics.counts();
        assert_eq!(counts.len(), 1, "only called methods are shown");
        assert_eq!(counts[0].codes, vec![("OK", 0), ("NOT_FOUND", 2)]);
        assert_eq!(counts[0].latency.count, 2);
    }
}
