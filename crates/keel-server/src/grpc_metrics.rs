//! etcd's gRPC server metrics, as go-grpc-prometheus counts them for etcd and etcd's Grafana
//! dashboard queries them: `grpc_server_started_total` and `grpc_server_handled_total` by service,
//! method and type (and status code), and the bytes of gRPC messages clients sent and received
//! (`etcd_network_client_grpc_{received,sent}_bytes_total`).
//!
//! Counted by a middleware in front of the gRPC routes, from what crosses the wire: a call is
//! started when its request arrives, and handled when its status is known — in the response's
//! headers (a call refused outright), in its trailers (a call answered), or never, when the client
//! went away first (counted as `Canceled`, as a Go handler returns then).

use std::collections::HashMap;
use std::fmt::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use keel_api::GrpcMethod;

use crate::metrics::Metrics;

/// gRPC's status codes by number, as the `grpc_code` label names them.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

/// The standard health service (tonic-health), served beside etcd's.
const HEALTH: [GrpcMethod; 2] = [
    GrpcMethod { service: "grpc.health.v1.Health", method: "Check", kind: "unary" },
    GrpcMethod { service: "grpc.health.v1.Health", method: "Watch", kind: "server_stream" },
];

/// Counters for every method the server serves, found by the request's path.
pub struct GrpcMetrics {
    methods: Vec<GrpcMethod>,
    by_path: HashMap<String, usize>,
    started: Vec<AtomicU64>,
    /// `handled[method][code]`.
    handled: Vec<[AtomicU64; CODES.len()]>,
    received_bytes: AtomicU64,
    sent_bytes: AtomicU64,
}

impl Default for GrpcMetrics {
    fn default() -> Self {
        let methods: Vec<GrpcMethod> = keel_api::GRPC_METHODS.iter().chain(HEALTH.iter()).copied().collect();
        let by_path = methods.iter().enumerate().map(|(i, m)| (format!("/{}/{}", m.service, m.method), i)).collect();
        GrpcMetrics {
            started: methods.iter().map(|_| AtomicU64::new(0)).collect(),
            handled: methods.iter().map(|_| std::array::from_fn(|_| AtomicU64::new(0))).collect(),
            methods,
            by_path,
            received_bytes: AtomicU64::new(0),
            sent_bytes: AtomicU64::new(0),
        }
    }
}

impl GrpcMetrics {
    fn handled(&self, method: usize, code: usize) {
        self.handled[method][code.min(CODES.len() - 1)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text of these counters (methods never called are left out, as Go's
    /// client leaves out label sets never used).
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP grpc_server_started_total Total number of RPCs started on the server.\n\
             # TYPE grpc_server_started_total counter"
        );
        for (i, method) in self.methods.iter().enumerate() {
            let started = self.started[i].load(Relaxed);
            if started > 0 {
                let _ = writeln!(
                    out,
                    "grpc_server_started_total{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {started}",
                    method.method, method.service, method.kind
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP grpc_server_handled_total Total number of RPCs completed on the server, regardless of success or failure.\n\
             # TYPE grpc_server_handled_total counter"
        );
        for (i, method) in self.methods.iter().enumerate() {
            for (code, count) in self.handled[i].iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    let _ = writeln!(
                        out,
                        "grpc_server_handled_total{{grpc_code=\"{}\",grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {count}",
                        CODES[code], method.method, method.service, method.kind
                    );
                }
            }
        }
        for (name, help, value) in [
            (
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
                &self.received_bytes,
            ),
            (
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
                &self.sent_bytes,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Relaxed));
        }
    }
}

/// The middleware: counts the calls to known gRPC methods and the bytes they carry; anything
/// else passes untouched.
pub async fn count(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let Some(&method) = metrics.grpc.by_path.get(request.uri().path()) else {
        return next.run(request).await;
    };
    metrics.grpc.started[method].fetch_add(1, Relaxed);
    let counted = metrics.clone();
    let request = request.map(|body| Body::new(RequestBytes { inner: body, metrics: counted }));
    let response = next.run(request).await;
    // A call refused outright answers with its status in the headers and no body ("trailers
    // only"); an answered one ends its body with trailers holding the status.
    let status_in_headers = grpc_status(response.headers());
    if let Some(code) = status_in_headers {
        metrics.grpc.handled(method, code);
    }
    response.map(|body| {
        Body::new(ResponseBytes { inner: body, metrics, method, status_known: status_in_headers.is_some() })
    })
}

fn grpc_status(headers: &axum::http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(value.to_str().ok().and_then(|code| code.parse().ok()).unwrap_or(UNKNOWN))
}

/// A request body that counts the bytes it carries.
struct RequestBytes {
    inner: Body,
    metrics: Arc<Metrics>,
}

impl http_body::Body for RequestBytes {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.metrics.grpc.received_bytes.fetch_add(data.len() as u64, Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that counts the bytes it carries and the call's status from its trailers.
struct ResponseBytes {
    inner: Body,
    metrics: Arc<Metrics>,
    method: usize,
    status_known: bool,
}

impl http_body::Body for ResponseBytes {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.metrics.grpc.sent_bytes.fetch_add(data.len() as u64, Relaxed);
                } else if let Some(trailers) = frame.trailers_ref() {
                    if !self.status_known {
                        self.status_known = true;
                        let code = grpc_status(trailers).unwrap_or(UNKNOWN);
                        self.metrics.grpc.handled(self.method, code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) if !self.status_known => {
                // The body ended without a status: the call failed on the way.
                self.status_known = true;
                self.metrics.grpc.handled(self.method, UNKNOWN);
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ResponseBytes {
    fn drop(&mut self) {
        if !self.status_known {
            // The client went away before the call ended (a watch closed, a keep-alive dropped).
            self.metrics.grpc.handled(self.method, CANCELED);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_etcd_method_is_known_with_its_kind() {
        let grpc = GrpcMetrics::default();
        let kind = |path: &str| grpc.by_path.get(path).map(|&i| grpc.methods[i].kind);
        assert_eq!(kind("/etcdserverpb.KV/Range"), Some("unary"));
        assert_eq!(kind("/etcdserverpb.Watch/Watch"), Some("bidi_stream"));
        assert_eq!(kind("/etcdserverpb.Lease/LeaseKeepAlive"), Some("bidi_stream"));
        assert_eq!(kind("/etcdserverpb.Maintenance/Snapshot"), Some("server_stream"));
        assert_eq!(kind("/v3electionpb.Election/Observe"), Some("server_stream"));
        assert_eq!(kind("/v3lockpb.Lock/Lock"), Some("unary"));
        assert_eq!(kind("/etcdserverpb.Auth/UserAdd"), Some("unary"));
        assert_eq!(kind("/grpc.health.v1.Health/Check"), Some("unary"));
        assert_eq!(kind("/etcdserverpb.KV/Nothing"), None);
    }

    #[test]
    fn counters_render_with_go_grpc_prometheus_labels() {
        let grpc = GrpcMetrics::default();
        let range = grpc.by_path["/etcdserverpb.KV/Range"];
        grpc.started[range].fetch_add(3, Relaxed);
        grpc.handled(range, 0);
        grpc.handled(range, 0);
        grpc.handled(range, 14);
        grpc.received_bytes.fetch_add(42, Relaxed);
        let mut text = String::new();
        grpc.render(&mut text);
        assert!(text.contains(
            "grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 3\n"
        ));
        assert!(text.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 2\n"));
        assert!(text.contains("grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"));
        assert!(text.contains("etcd_network_client_grpc_received_bytes_total 42\n"));
        assert!(!text.contains("grpc_method=\"Put\""), "methods never called are left out");
    }
}
