//! Every Prometheus metric the relay exports, declared once with its help text.
//!
//! Labels only ever take values from bounded sets: item types (`ItemType::as_str`), reasons and endpoints from
//! `&'static str` enums in the code, and rule ids / field names from the loaded rules file. Never a project key, a
//! path, or a payload value.
//!
//! Each relay owns its own `Registry` (no global), so tests can run several relays in one process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

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
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::with_opts(Opts::new(name, help).namespace(NAMESPACE)).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).namespace(NAMESPACE).buckets(buckets.to_vec());
    let metric = Histogram::with_opts(opts).expect("valid metric definition");
    registry.register(Box::new(metric.clone())).expect("metric registered once");
    metric
}

/// Scrubbing one envelope takes microseconds to a few milliseconds.
const SCRUB_BUCKETS: &[f64] = &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5];
/// Requests and upstream calls: milliseconds to the upstream timeout.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new("request_duration_seconds", "Time from the start of a request to its answer, by endpoint.")
                .namespace(NAMESPACE)
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )
        .expect("valid metric definition");
        r.register(Box::new(request_duration.clone())).expect("metric registered once");
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1; the version label carries the relay's version.").namespace(NAMESPACE),
            &["version"],
        )
        .expect("valid metric definition");
        r.register(Box::new(build_info.clone())).expect("metric registered once");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let metrics = Metrics {
            requests: counter_vec(&r, "requests_total", "HTTP requests answered, by endpoint and status code.", &["endpoint", "status"]),
            request_errors: counter_vec(&r, "request_errors_total", "Requests rejected, by cause.", &["reason"]),
            request_duration,
            received_bytes: counter_vec(&r, "received_bytes_total", "Request body bytes, by stage (wire, decompressed).", &["stage"]),
            forwarded_bytes: counter_vec(&r, "forwarded_bytes_total", "Envelope bytes sent upstream, by stage (uncompressed, wire).", &["stage"]),
            envelopes_received: counter(&r, "envelopes_received_total", "Envelopes accepted from SDKs."),
            envelopes_forwarded: counter(&r, "envelopes_forwarded_total", "Envelopes delivered to the upstream."),
            envelopes_dropped: counter_vec(&r, "envelopes_dropped_total", "Envelopes given up on, by reason.", &["reason"]),
            items_received: counter_vec(&r, "items_received_total", "Envelope items received, by item type.", &["item_type"]),
            items_forwarded: counter_vec(&r, "items_forwarded_total", "Envelope items kept for forwarding, by item type.", &["item_type"]),
            items_dropped: counter_vec(&r, "items_dropped_total", "Envelope items dropped, by item type and reason.", &["item_type", "reason"]),
            payloads: counter_vec(&r, "payloads_total", "Replay and attachment payloads, by format and outcome.", &["format", "outcome"]),
            redactions: counter_vec(&r, "redactions_total", "Values redacted, by rule id.", &["rule"]),
            dry_run_redactions: counter_vec(&r, "dry_run_redactions_total", "Values that would have been redacted (dry run), by rule id.", &["rule"]),
            truncations: counter_vec(&r, "truncations_total", "Values truncated, by field name.", &["field"]),
            spans_dropped: counter(&r, "spans_dropped_total", "Spans removed by drop rules from span containers that were kept."),
            items_tree_walked: counter(&r, "items_tree_walked_total", "JSON items the streaming walk left to the slower tree walk."),
            lane_changes: counter(&r, "lane_changes_total", "Compressed bodies small on the wire (or compressed payloads in their items) that decompressed past 1 MiB and moved to the large bodies' processing lane."),
            minidumps: counter_vec(&r, "minidumps_total", "Minidumps seen (attachments and crashpad uploads), by outcome.", &["outcome"]),
            scrub_duration: histogram(&r, "scrub_duration_seconds", "Time to parse, filter, scrub and re-serialize one envelope.", SCRUB_BUCKETS),
            upstream_requests: counter_vec(&r, "upstream_requests_total", "Requests to the upstream, by outcome.", &["outcome"]),
            upstream_duration: histogram(&r, "upstream_duration_seconds", "Latency of requests to the upstream.", LATENCY_BUCKETS),
            upstream_retries: counter(&r, "upstream_retries_total", "Upstream deliveries retried."),
            queue_envelopes: gauge(&r, "queue_envelopes", "Envelopes waiting in memory for delivery."),
            queue_bytes: gauge(&r, "queue_bytes", "Bytes waiting in memory for delivery."),
            spool_envelopes: gauge(&r, "spool_envelopes", "Envelopes in the disk spool."),
            spool_bytes: gauge(&r, "spool_bytes", "Bytes in the disk spool."),
            spool_corrupt: counter(&r, "spool_corrupt_total", "Spool entries that could not be read back and were moved aside."),
            rules_reloads: counter_vec(&r, "rules_reloads_total", "Rule reloads, by result (ok, error).", &["result"]),
            rules_version: gauge(&r, "rules_version", "Version of the rules in force: 1 at start, +1 per successful reload."),
            rules_last_reload_ok: gauge(&r, "rules_last_reload_ok", "1 when the last reload succeeded or none was tried, 0 when it failed."),
            ready: gauge(&r, "ready", "1 while the relay accepts traffic."),
            memory_budget_bytes: gauge(&r, "memory_budget_bytes", "Memory budget for requests in flight, in bytes."),
            memory_budget_used_bytes: gauge(&r, "memory_budget_used_bytes", "Bytes of the memory budget held by requests in flight."),
            connections_refused: counter_vec(&r, "connections_refused_total", "Client connections closed by the relay's defences, by reason.", &["reason"]),
            build_info,
            registry: r,
        };
        metrics.rules_version.set(1);
        metrics.rules_last_reload_ok.set(1);
        metrics
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec only fails on metric families with invalid names, which `new` never registers.
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding of valid metrics");
        String::from_utf8(buffer).expect("Prometheus text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
