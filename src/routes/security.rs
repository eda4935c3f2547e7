//! Browser reports: CSP violations on `/api/<id>/security/` and `/csp-report/`, network errors on `/nel/`.
//!
//! Browsers authenticate with `?sentry_key=` in the report URL (they cannot set headers); `sentry_release` and
//! `sentry_environment` in the same query become item headers, as the JavaScript SDK's `createRawSecurityEnvelope`
//! writes them. A legacy body (`{"csp-report": {...}}`) is one report; a Reporting API array
//! (`application/reports+json`) is split into one report per entry, and entries of other types (`deprecation`,
//! `intervention`, ...) are dropped and counted. HPKP, Expect-CT and Expect-Staple reports, which Sentry no longer
//! takes, are refused.
//!
//! CSP reports become `raw_security` items of one envelope, the form Sentry takes from the JavaScript SDK, so the
//! envelope pipeline scrubs them (`scrub::security`) and they share the envelope's rate limits, queue and spool. NEL
//! reports have no envelope form Sentry still takes (Relay turns them into logs internally), so the scrubbed array
//! goes to the upstream's `/nel/` route; like Sentry, NEL ignores rate limits.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::{WhenLimited, content_type, empty_json, identify, queue, scrub_envelope, with_body};
use crate::auth::{self, Identity};
use crate::delivery::Destination;
use crate::envelope::{Envelope, Item, ItemType};
use crate::error::RelayError;
use crate::ingest;
use crate::metrics::Metrics;
use crate::server::AppState;

/// Relay's limit for a security report body.
const MAX_CSP_BYTES: usize = 1024 * 1024;
/// Relay's container limit, which its NEL route uses.
const MAX_NEL_BYTES: usize = 12 * 1024 * 1024;
/// What browsers send CSP reports as: the legacy `report-uri` type, and the Reporting API's.
const CSP_CONTENT_TYPES: &[&str] = &["application/csp-report", "application/json", "application/reports+json"];
/// NEL reports only come through the Reporting API.
const NEL_CONTENT_TYPES: &[&str] = &["application/json", "application/reports+json"];
/// Longest `sentry_release` / `sentry_environment` carried into item headers.
const MAX_TAG_LEN: usize = 200;

/// The reports in a CSP body, one JSON object each, and how many entries of other types were skipped.
pub fn csp_reports(body: &[u8]) -> Result<(Vec<Map<String, Value>>, u64), RelayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(report)) => {
            if report.contains_key("csp-report") {
                Ok((vec![report], 0))
            } else if ["expect-ct-report", "expect-staple-report", "known-pins", "known_pins"]
                .iter()
                .any(|key| report.contains_key(*key))
            {
                Err(RelayError::InvalidReport(
                    "HPKP, Expect-CT and Expect-Staple reports are no longer accepted",
                ))
            } else {
                Err(RelayError::InvalidReport("not a CSP report"))
            }
        }
        Ok(Value::Array(entries)) => split(entries, "csp-violation"),
        Ok(_) => Err(RelayError::InvalidReport("not a CSP report")),
        Err(_) => Err(RelayError::InvalidReport("not valid JSON")),
    }
}

/// The network-error reports in a NEL body (always a Reporting API array), and how many entries were skipped.
pub fn nel_reports(body: &[u8]) -> Result<(Vec<Map<String, Value>>, u64), RelayError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(entries)) => split(entries, "network-error"),
        Ok(_) => Err(RelayError::InvalidReport("not a Reporting API array")),
        Err(_) => Err(RelayError::InvalidReport("not valid JSON")),
    }
}

/// Reporting API entries of one type; every entry must be an object with a `body` object.
fn split(entries: Vec<Value>, wanted: &str) -> Result<(Vec<Map<String, Value>>, u64), RelayError> {
    let mut reports = Vec::with_capacity(entries.len());
    let mut skipped = 0;
    for entry in entries {
        let Value::Object(entry) = entry else {
            return Err(RelayError::InvalidReport("a report is not a JSON object"));
        };
        if !entry.get("body").is_some_and(Value::is_object) {
            return Err(RelayError::InvalidReport("a report has no body object"));
        }
        if entry.get("type").and_then(Value::as_str) == Some(wanted) {
            reports.push(entry);
        } else {
            skipped += 1;
        }
    }
    Ok((reports, skipped))
}

/// `sentry_release` and `sentry_environment` from the report URL's query.
fn query_tags(query: Option<&str>) -> Vec<(&'static str, String)> {
    let mut tags = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let header = match name.as_ref() {
            "sentry_release" => "sentry_release",
            "sentry_environment" => "sentry_environment",
            _ => continue,
        };
        if !value.is_empty() && value.len() <= MAX_TAG_LEN {
            tags.push((header, value.into_owned()));
        }
    }
    tags
}

/// One envelope of `ty` items, one per report, as the pipeline takes it (pure: the fuzz target `security_report`
/// builds it the same way).
pub fn reports_envelope(
    reports: Vec<Map<String, Value>>,
    ty: ItemType,
    tags: &[(&'static str, String)],
    event_id: String,
) -> Envelope {
    let mut headers = Map::new();
    headers.insert("event_id".into(), Value::String(event_id));
    let mut envelope = Envelope::new(headers);
    for report in reports {
        // Serializing a `Value` built from parsed JSON cannot fail.
        let payload = serde_json::to_vec(&Value::Object(report)).unwrap_or_default();
        let mut item = Item::new(ty.as_str(), Bytes::from(payload));
        item.headers_mut()
            .insert("content_type".into(), Value::String("application/json".into()));
        for (name, value) in tags {
            item.headers_mut().insert((*name).into(), Value::String(value.clone()));
        }
        envelope.items.push(item);
    }
    envelope
}

fn count_skipped(metrics: &Metrics, ty: ItemType, skipped: u64) {
    if skipped > 0 {
        metrics
            .items_dropped
            .with_label_values(&[ty.as_str(), "unsupported_report"])
            .inc_by(skipped);
    }
}

/// What both report routes check before reading the body, in this order: the request's auth (a browser's is in
/// the query), its content type (one of `allowed`), and who is sending.
fn accept(
    state: &AppState,
    request: Request<Incoming>,
    project_id: u64,
    allowed: &[&str],
) -> Result<(Parts, Incoming, Identity), RelayError> {
    let (parts, body) = request.into_parts();
    let request_auth = auth::from_request(&parts.headers, parts.uri.query())?;
    if !allowed.contains(&content_type(&parts).as_str()) {
        return Err(RelayError::UnsupportedContentType);
    }
    let identity = identify(state, request_auth, project_id)?;
    Ok((parts, body, identity))
}

/// `POST /api/<id>/security/` (and `/csp-report/`).
pub async fn handle_csp(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    project_id: u64,
) -> Result<Response<Full<Bytes>>, RelayError> {
    let (parts, body, identity) = accept(state, request, project_id, CSP_CONTENT_TYPES)?;
    let tags = query_tags(parts.uri.query());
    let rules = state.rules();
    let metrics = state.metrics.clone();
    let envelope = with_body(state, &parts, body, MAX_CSP_BYTES, move |body| {
        let (reports, skipped) = csp_reports(&body)?;
        count_skipped(&metrics, ItemType::RawSecurity, skipped);
        let envelope = reports_envelope(reports, ItemType::RawSecurity, &tags, ingest::new_event_id());
        let envelope = scrub_envelope(envelope, &rules, &metrics, project_id);
        Ok((!envelope.items.is_empty()).then(|| envelope.to_bytes()))
    })
    .await?;
    let accepted = empty_json(StatusCode::OK);
    queue(
        state,
        &parts,
        identity,
        envelope,
        Destination::Envelope,
        accepted,
        WhenLimited::Refuse,
    )
    .await
}

/// `POST /api/<id>/nel/`.
pub async fn handle_nel(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    project_id: u64,
) -> Result<Response<Full<Bytes>>, RelayError> {
    let (parts, body, identity) = accept(state, request, project_id, NEL_CONTENT_TYPES)?;
    let rules = state.rules();
    let metrics = state.metrics.clone();
    let body = with_body(state, &parts, body, MAX_NEL_BYTES, move |body| {
        let (reports, skipped) = nel_reports(&body)?;
        count_skipped(&metrics, ItemType::Nel, skipped);
        let envelope = reports_envelope(reports, ItemType::Nel, &[], ingest::new_event_id());
        let envelope = scrub_envelope(envelope, &rules, &metrics, project_id);
        if envelope.items.is_empty() {
            return Ok(None);
        }
        // Back to the array the browser sent, each report as scrubbed.
        let mut array = Vec::with_capacity(envelope.items.len());
        for item in &envelope.items {
            let report: Value =
                serde_json::from_slice(item.payload()).map_err(|_| RelayError::InvalidReport("not valid JSON"))?;
            array.push(report);
        }
        Ok(Some(Bytes::from(
            serde_json::to_vec(&Value::Array(array)).unwrap_or_default(),
        )))
    })
    .await?;
    // Only envelopes are checked against rate limits: NEL ignores them, as Sentry's route does.
    let accepted = empty_json(StatusCode::OK);
    queue(
        state,
        &parts,
        identity,
        body,
        Destination::Nel,
        accepted,
        WhenLimited::Accept,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporting_api_arrays_are_split_and_other_types_skipped() {
        let body = br#"[{"type":"csp-violation","url":"https://a.example/","body":{"effectiveDirective":"script-src"}},
                        {"type":"deprecation","url":"https://a.example/","body":{"id":"x"}},
                        {"type":"csp-violation","url":"https://a.example/b","body":{"effectiveDirective":"img-src"}}]"#;
        let (reports, skipped) = csp_reports(body).unwrap();
        assert_eq!((reports.len(), skipped), (2, 1));
        assert!(matches!(csp_reports(b"[1]"), Err(RelayError::InvalidReport(_))));
        assert!(matches!(csp_reports(b"{\"x\":1}"), Err(RelayError::InvalidReport(_))));
        assert!(matches!(
            csp_reports(br#"{"expect-ct-report":{}}"#),
            Err(RelayError::InvalidReport(_))
        ));
        assert_eq!(csp_reports(br#"{"csp-report":{}}"#).unwrap().0.len(), 1);
        assert!(matches!(
            nel_reports(br#"{"csp-report":{}}"#),
            Err(RelayError::InvalidReport(_))
        ));
    }

    #[test]
    fn release_and_environment_come_from_the_query() {
        let tags = query_tags(Some(
            "sentry_key=abc&sentry_release=web%401.2&sentry_environment=prod&x=1",
        ));
        assert_eq!(
            tags,
            vec![
                ("sentry_release", "web@1.2".to_string()),
                ("sentry_environment", "prod".to_string())
            ]
        );
    }
}
