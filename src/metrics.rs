//! Every Prometheus metric the relay exports, declared once with its help text.
//!
//! Labels only ever take values from bounded sets: item types (`ItemType::as_str`), reasons and endpoints from
//! `&'static str` enums in the code, and rule ids / field names from the loaded rules file. Never a project key, a
//! path, or a payload value.
//!
//! Each relay owns its own `Registry` (no global), so tests can run several relays in one process.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::envelope::ItemType;

const NAMESPACE: &str = "scrub_relay";

/// All of the relay's metrics. Cheap to share: clone the `Arc` the server holds.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered, by endpoint (`envelope`, `store`, `tunnel`, `routes::Kind`, `health`, `metrics`, `other`)
    /// and status code.
    pub requests: IntCounterVec,
    /// Requests rejected before processing, by cause (`Error::kind`).
    pub request_errors: IntCounterVec,
    /// Time from the first byte of a request to its answer, by endpoint.
    pub request_duration: HistogramVec,
    /// Request body bytes, by stage: `wire` (as received) and `decompressed`.
    pub received_bytes: IntCounterVec,
    /// Envelope bytes sent upstream, by stage: `uncompressed` and `wire`.
    pub forwarded_bytes: IntCounterVec,
    /// Envelopes accepted from SDKs.
    pub envelopes_received: IntCounter,
    /// Envelopes delivered to the upstream (2xx).
    pub envelopes_forwarded: IntCounter,
    /// Envelopes given up on, by reason (`empty_after_filter`, `rate_limited`, `upstream_rejected`, `expired`, ...).
    pub envelopes_dropped: IntCounterVec,
    /// Items received, by item type.
    pub items_received: IntCounterVec,
    /// Items forwarded (kept after filtering and scrubbing), by item type.
    pub items_forwarded: IntCounterVec,
    /// Items dropped, by item type and reason (`filtered_route`, `rate_limited`, `invalid_replay`, `too_large`, ...).
    pub items_dropped: IntCounterVec,
    /// Payloads that are not plain JSON items (replays, attachments), by format and outcome.
    pub payloads: IntCounterVec,
    /// Values redacted, by rule id.
    pub redactions: IntCounterVec,
    /// Values that would have been redacted in dry-run mode, by rule id.
    pub dry_run_redactions: IntCounterVec,
    /// Values truncated, by field name.
    pub truncations: IntCounterVec,
    /// Spans removed by drop rules from span containers that were kept.
    pub spans_dropped: IntCounter,
    /// JSON items the streaming walk left to the (slower) tree walk.
    pub items_tree_walked: IntCounter,
    /// Compressed bodies small on the wire (or payloads in their items) that decompressed past `ingest::SMALL_DECODED`
    /// and moved to the large lane.
    pub lane_changes: IntCounter,
    pub minidumps: IntCounterVec,
    /// Time spent parsing, filtering, scrubbing and re-serializing one envelope.
    pub scrub_duration: Histogram,
    /// Upstream requests, by outcome (`2xx`, `429`, `4xx`, `5xx`, `network_error`, `timeout`).
    pub upstream_requests: IntCounterVec,
    /// Upstream request latency.
    pub upstream_duration: Histogram,
    /// Upstream delivery retries scheduled.
    pub upstream_retries: IntCounter,
    /// Envelopes waiting in memory for delivery.
    pub queue_envelopes: IntGauge,
    /// Bytes waiting in memory for delivery.
    pub queue_bytes: IntGauge,
    /// Envelopes in the disk spool.
    pub spool_envelopes: IntGauge,
    /// Bytes in the disk spool.
    pub spool_bytes: IntGauge,
    /// Spool entries that could not be read back and were moved aside.
    pub spool_corrupt: IntCounter,
    /// Rule reloads, by result (`ok`, `error`).
    pub rules_reloads: IntCounterVec,
    /// Version of the rules in force: 1 at start, +1 per successful reload.
    pub rules_version: IntGauge,
    /// 1 when the last reload attempt succeeded (or none was made), 0 when it failed.
    pub rules_last_reload_ok: IntGauge,
    /// 1 while the relay is ready to accept traffic.
    pub ready: IntGauge,
    /// The memory budget for requests in flight, in bytes (see `crate::budget`).
    pub memory_budget_bytes: IntGauge,
    /// Bytes of the memory budget held by requests in flight.
    pub memory_budget_used_bytes: IntGauge,
    /// Client connections and requests cut by the relay's defences, by reason (`client_connections`, `saturated`,
    /// `slow_body`).
    pub connections_refused: IntCounterVec,
    /// Always 1; the `version` label carries the relay's version.
    pub build_info: IntGaugeVec,
    /// The children every accepted envelope counts, kept (see [`Hot`]).
    hot: Hot,
}

/// Children of the labelled metrics that every envelope counts, each looked up once, on first use (so `/metrics`
/// shows a series only once it was counted, as before). `with_label_values` hashes the label values and takes the
/// vector's lock on every call: about 150 instructions and two atomic operations, fifteen times per request
/// (issue #11).
#[derive(Default)]
struct Hot {
    received_wire: OnceLock<IntCounter>,
    received_decompressed: OnceLock<IntCounter>,
    forwarded_uncompressed: OnceLock<IntCounter>,
    forwarded_wire: OnceLock<IntCounter>,
    upstream_2xx: OnceLock<IntCounter>,
    items_received: [OnceLock<IntCounter>; ItemType::ALL.len()],
    items_forwarded: [OnceLock<IntCounter>; ItemType::ALL.len()],
    /// By [`HOT_ENDPOINTS`] index: requests answered 200, and request durations.
    requests_ok: [OnceLock<IntCounter>; HOT_ENDPOINTS.len()],
    request_duration: [OnceLock<Histogram>; HOT_ENDPOINTS.len()],
}

/// The endpoints whose answers [`Hot`] keeps children for: the ingest routes SDKs post to.
const HOT_ENDPOINTS: [&str; 3] = ["envelope", "store", "tunnel"];

fn child<'a>(cell: &'a OnceLock<IntCounter>, vec: &IntCounterVec, labels: &[&str]) -> &'a IntCounter {
    cell.get_or_init(|| vec.with_label_values(labels))
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric =
        IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help)
        .namespace(NAMESPACE)
        .buckets(buckets.to_vec());
    let metric = Histogram::with_opts(opts).expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

/// Scrubbing one envelope takes microseconds to a few milliseconds.
const SCRUB_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
];
/// Requests and upstream calls: milliseconds to the upstream timeout.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from the start of a request to its answer, by endpoint.",
            )
            .namespace(NAMESPACE)
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .expect("valid metric definition");
        r.register(Box::new(request_duration.clone()))
            .expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the version label carries the relay's version.").namespace(NAMESPACE),
            &["version"],
        )
        .expect("valid metric definition");
        r.register(Box::new(build_info.clone()))
            .expect("metric registered once");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let metrics = Metrics {
            requests: counter_vec(
                &r,
                "requests_total",
                "HTTP requests answered, by endpoint and status code.",
                &["endpoint", "status"],
            ),
            request_errors: counter_vec(&r, "request_errors_total", "Requests rejected, by cause.", &["reason"]),
            request_duration,
            received_bytes: counter_vec(
                &r,
                "received_bytes_total",
                "Request body bytes, by stage (wire, decompressed).",
                &["stage"],
            ),
            forwarded_bytes: counter_vec(
                &r,
                "forwarded_bytes_total",
                "Envelope bytes sent upstream, by stage (uncompressed, wire).",
                &["stage"],
            ),
            envelopes_received: counter(&r, "envelopes_received_total", "Envelopes accepted from SDKs."),
            envelopes_forwarded: counter(&r, "envelopes_forwarded_total", "Envelopes delivered to the upstream."),
            envelopes_dropped: counter_vec(
                &r,
                "envelopes_dropped_total",
                "Envelopes given up on, by reason.",
                &["reason"],
            ),
            items_received: counter_vec(
                &r,
                "items_received_total",
                "Envelope items received, by item type.",
                &["item_type"],
            ),
            items_forwarded: counter_vec(
                &r,
                "items_forwarded_total",
                "Envelope items kept for forwarding, by item type.",
                &["item_type"],
            ),
            items_dropped: counter_vec(
                &r,
                "items_dropped_total",
                "Envelope items dropped, by item type and reason.",
                &["item_type", "reason"],
            ),
            payloads: counter_vec(
                &r,
                "payloads_total",
                "Replay and attachment payloads, by format and outcome.",
                &["format", "outcome"],
            ),
            redactions: counter_vec(&r, "redactions_total", "Values redacted, by rule id.", &["rule"]),
            dry_run_redactions: counter_vec(
                &r,
                "dry_run_redactions_total",
                "Values that would have been redacted (dry run), by rule id.",
                &["rule"],
            ),
            truncations: counter_vec(&r, "truncations_total", "Values truncated, by field name.", &["field"]),
            spans_dropped: counter(
                &r,
                "spans_dropped_total",
                "Spans removed by drop rules from span containers that were kept.",
            ),
            items_tree_walked: counter(
                &r,
                "items_tree_walked_total",
                "JSON items the streaming walk left to the slower tree walk.",
            ),
            lane_changes: counter(
                &r,
                "lane_changes_total",
                "Compressed bodies small on the wire (or compressed payloads in their items) that decompressed past 1 MiB and moved to the large bodies' processing lane.",
            ),
            minidumps: counter_vec(
                &r,
                "minidumps_total",
                "Minidumps seen (attachments and crashpad uploads), by outcome.",
                &["outcome"],
            ),
            scrub_duration: histogram(
                &r,
                "scrub_duration_seconds",
                "Time to parse, filter, scrub and re-serialize one envelope.",
                SCRUB_BUCKETS,
            ),
            upstream_requests: counter_vec(
                &r,
                "upstream_requests_total",
                "Requests to the upstream, by outcome.",
                &["outcome"],
            ),
            upstream_duration: histogram(
                &r,
                "upstream_duration_seconds",
                "Latency of requests to the upstream.",
                LATENCY_BUCKETS,
            ),
            upstream_retries: counter(&r, "upstream_retries_total", "Upstream deliveries retried."),
            queue_envelopes: gauge(&r, "queue_envelopes", "Envelopes waiting in memory for delivery."),
            queue_bytes: gauge(&r, "queue_bytes", "Bytes waiting in memory for delivery."),
            spool_envelopes: gauge(&r, "spool_envelopes", "Envelopes in the disk spool."),
            spool_bytes: gauge(&r, "spool_bytes", "Bytes in the disk spool."),
            spool_corrupt: counter(
                &r,
                "spool_corrupt_total",
                "Spool entries that could not be read back and were moved aside.",
            ),
            rules_reloads: counter_vec(
                &r,
                "rules_reloads_total",
                "Rule reloads, by result (ok, error).",
                &["result"],
            ),
            rules_version: gauge(
                &r,
                "rules_version",
                "Version of the rules in force: 1 at start, +1 per successful reload.",
            ),
            rules_last_reload_ok: gauge(
                &r,
                "rules_last_reload_ok",
                "1 when the last reload succeeded or none was tried, 0 when it failed.",
            ),
            ready: gauge(&r, "ready", "1 while the relay accepts traffic."),
            memory_budget_bytes: gauge(
                &r,
                "memory_budget_bytes",
                "Memory budget for requests in flight, in bytes.",
            ),
            memory_budget_used_bytes: gauge(
                &r,
                "memory_budget_used_bytes",
                "Bytes of the memory budget held by requests in flight.",
            ),
            connections_refused: counter_vec(
                &r,
                "connections_refused_total",
                "Client connections closed by the relay's defences, by reason.",
                &["reason"],
            ),
            build_info,
            registry: r,
            hot: Hot::default(),
        };
        metrics.rules_version.set(1);
        metrics.rules_last_reload_ok.set(1);
        metrics
    }

    /// `received_bytes_total{stage="wire"}`.
    pub fn received_wire_bytes(&self) -> &IntCounter {
        child(&self.hot.received_wire, &self.received_bytes, &["wire"])
    }

    /// `received_bytes_total{stage="decompressed"}`.
    pub fn received_decompressed_bytes(&self) -> &IntCounter {
        child(&self.hot.received_decompressed, &self.received_bytes, &["decompressed"])
    }

    /// `forwarded_bytes_total{stage="uncompressed"}`.
    pub fn forwarded_uncompressed_bytes(&self) -> &IntCounter {
        child(
            &self.hot.forwarded_uncompressed,
            &self.forwarded_bytes,
            &["uncompressed"],
        )
    }

    /// `forwarded_bytes_total{stage="wire"}`.
    pub fn forwarded_wire_bytes(&self) -> &IntCounter {
        child(&self.hot.forwarded_wire, &self.forwarded_bytes, &["wire"])
    }

    /// Counts one upstream request in `upstream_requests_total` by its outcome label.
    pub fn count_upstream_request(&self, outcome: &str) {
        if outcome == "2xx" {
            child(&self.hot.upstream_2xx, &self.upstream_requests, &["2xx"]).inc();
        } else {
            self.upstream_requests.with_label_values(&[outcome]).inc();
        }
    }

    /// `items_received_total{item_type=...}`.
    pub fn item_received(&self, ty: ItemType) -> &IntCounter {
        child(
            &self.hot.items_received[ty as usize],
            &self.items_received,
            &[ty.as_str()],
        )
    }

    /// `items_forwarded_total{item_type=...}`.
    pub fn item_forwarded(&self, ty: ItemType) -> &IntCounter {
        child(
            &self.hot.items_forwarded[ty as usize],
            &self.items_forwarded,
            &[ty.as_str()],
        )
    }

    /// Counts one answered request in `requests_total` and its duration in `request_duration_seconds`.
    pub fn count_request(&self, endpoint: &str, status: http::StatusCode, seconds: f64) {
        let hot = HOT_ENDPOINTS.iter().position(|hot| *hot == endpoint);
        match hot {
            Some(at) if status == http::StatusCode::OK => {
                child(&self.hot.requests_ok[at], &self.requests, &[endpoint, "200"]).inc();
            }
            _ => self.requests.with_label_values(&[endpoint, status.as_str()]).inc(),
        }
        match hot {
            Some(at) => self.hot.request_duration[at]
                .get_or_init(|| self.request_duration.with_label_values(&[endpoint]))
                .observe(seconds),
            None => self.request_duration.with_label_values(&[endpoint]).observe(seconds),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families with invalid names, which `new` never registers.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of valid metrics");
        String::from_utf8(buffer).expect("Prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kept children are the labelled series themselves, indexed right, and appear in `/metrics` only once used.
    #[test]
    fn kept_children_count_the_labelled_series() {
        for (at, ty) in ItemType::ALL.into_iter().enumerate() {
            assert_eq!(ty as usize, at, "{ty:?} indexes the kept children");
        }
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("scrub_relay_received_bytes_total{"));
        metrics.received_wire_bytes().inc_by(3);
        metrics.received_decompressed_bytes().inc_by(5);
        metrics.forwarded_uncompressed_bytes().inc_by(7);
        metrics.forwarded_wire_bytes().inc_by(11);
        assert_eq!(metrics.received_bytes.with_label_values(&["wire"]).get(), 3);
        assert_eq!(metrics.received_bytes.with_label_values(&["decompressed"]).get(), 5);
        assert_eq!(metrics.forwarded_bytes.with_label_values(&["uncompressed"]).get(), 7);
        assert_eq!(metrics.forwarded_bytes.with_label_values(&["wire"]).get(), 11);
        for ty in ItemType::ALL {
            metrics.item_received(ty).inc();
            metrics.item_forwarded(ty).inc_by(2);
            assert_eq!(metrics.items_received.with_label_values(&[ty.as_str()]).get(), 1);
            assert_eq!(metrics.items_forwarded.with_label_values(&[ty.as_str()]).get(), 2);
        }
        for outcome in ["2xx", "2xx", "5xx", "timeout"] {
            metrics.count_upstream_request(outcome);
        }
        assert_eq!(metrics.upstream_requests.with_label_values(&["2xx"]).get(), 2);
        assert_eq!(metrics.upstream_requests.with_label_values(&["5xx"]).get(), 1);
        assert_eq!(metrics.upstream_requests.with_label_values(&["timeout"]).get(), 1);
        let exposition = metrics.encode();
        assert!(!exposition.contains("endpoint=\"envelope\""));
        for (endpoint, status) in [
            ("envelope", http::StatusCode::OK),
            ("envelope", http::StatusCode::OK),
            ("envelope", http::StatusCode::BAD_REQUEST),
            ("health", http::StatusCode::OK),
        ] {
            metrics.count_request(endpoint, status, 0.5);
        }
        assert_eq!(metrics.requests.with_label_values(&["envelope", "200"]).get(), 2);
        assert_eq!(metrics.requests.with_label_values(&["envelope", "400"]).get(), 1);
        assert_eq!(metrics.requests.with_label_values(&["health", "200"]).get(), 1);
        assert_eq!(
            metrics
                .request_duration
                .with_label_values(&["envelope"])
                .get_sample_count(),
            3
        );
        assert_eq!(
            metrics
                .request_duration
                .with_label_values(&["health"])
                .get_sample_count(),
            1
        );
    }
}
