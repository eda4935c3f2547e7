//! HTTP cron check-ins: `GET`/`POST /api/<id>/cron/<slug>[/<key>]/?status=in_progress|ok|error`, from curl and
//! cron jobs.
//!
//! As in Relay, a check-in becomes one `check_in` envelope item (`check_in_id`, `monitor_slug`, `status`, optional
//! `environment` and `duration`; a JSON `POST` body may carry the whole check-in, `monitor_config` included), which
//! the envelope pipeline scrubs and delivery forwards like any envelope. The answer is 202 and never 429: a cron job
//! cannot back off, and Sentry answers the same. The key may be the path's last segment, or the usual header or
//! `sentry_key` query parameter (one of them, not two).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::{WhenLimited, content_type, empty_json, identify, queue, scrub_envelope, with_body};
use crate::auth::{self, AuthSource, RequestAuth};
use crate::delivery::Destination;
use crate::envelope::{Envelope, Item};
use crate::error::RelayError;
use crate::ingest;
use crate::server::AppState;

/// Sentry's limit for a check-in item.
const MAX_CHECK_IN_BYTES: usize = 100 * 1024;
/// Sentry's monitor slugs are at most 50 characters; some room for older ones.
const MAX_SLUG_LEN: usize = 128;
/// The check-in id that asks Sentry to open or close the monitor's latest check-in.
const NIL_CHECK_IN_ID: &str = "00000000000000000000000000000000";

/// `<slug>` and the optional `<key>` from what follows `/api/<id>/cron/`.
pub fn parse_path(rest: &str) -> Result<(&str, Option<&str>), RelayError> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (slug, key) = match rest.split_once('/') {
        Some((slug, key)) => (slug, Some(key)),
        None => (rest, None),
    };
    let slug_ok = !slug.is_empty()
        && slug.len() <= MAX_SLUG_LEN
        && slug
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if !slug_ok {
        return Err(RelayError::InvalidCheckIn("invalid monitor slug"));
    }
    if key.is_some_and(|key| !crate::dsn::is_valid_public_key(key)) {
        return Err(RelayError::InvalidAuth("malformed sentry_key"));
    }
    Ok((slug, key))
}

/// The check-in a query string describes.
pub fn from_query(slug: &str, query: &str) -> Result<Map<String, Value>, RelayError> {
    let mut check_in = Map::new();
    let mut status = None;
    let mut id = None;
    let mut environment = None;
    let mut duration = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "status" => status = Some(value.into_owned()),
            "check_in_id" => id = Some(value.into_owned()),
            "environment" => environment = Some(value.into_owned()),
            "duration" => duration = Some(value.into_owned()),
            _ => {}
        }
    }
    let status = status.ok_or(RelayError::InvalidCheckIn("missing status"))?;
    check_in.insert(
        "check_in_id".into(),
        Value::String(match id {
            Some(id) => ingest::normalize_event_id(&id).ok_or(RelayError::InvalidCheckIn("invalid check_in_id"))?,
            None => NIL_CHECK_IN_ID.into(),
        }),
    );
    check_in.insert("monitor_slug".into(), Value::String(slug.into()));
    check_in.insert("status".into(), Value::String(status));
    if let Some(environment) = environment {
        check_in.insert("environment".into(), Value::String(environment));
    }
    if let Some(duration) = duration {
        let seconds: f64 = duration
            .parse()
            .ok()
            .filter(|d: &f64| d.is_finite() && *d >= 0.0)
            .ok_or(RelayError::InvalidCheckIn("invalid duration"))?;
        check_in.insert("duration".into(), Value::from(seconds));
    }
    validate(&check_in)?;
    Ok(check_in)
}

/// The check-in a JSON body describes, its slug taken from the path.
pub fn from_json(slug: &str, body: &[u8]) -> Result<Map<String, Value>, RelayError> {
    let mut check_in = match serde_json::from_slice(body) {
        Ok(Value::Object(check_in)) => check_in,
        Ok(_) => return Err(RelayError::InvalidCheckIn("not a JSON object")),
        Err(_) => return Err(RelayError::InvalidCheckIn("not valid JSON")),
    };
    check_in.insert("monitor_slug".into(), Value::String(slug.into()));
    if !check_in.contains_key("check_in_id") {
        check_in.insert("check_in_id".into(), Value::String(NIL_CHECK_IN_ID.into()));
    }
    validate(&check_in)?;
    Ok(check_in)
}

fn validate(check_in: &Map<String, Value>) -> Result<(), RelayError> {
    match check_in.get("status").and_then(Value::as_str) {
        Some("in_progress" | "ok" | "error") => Ok(()),
        Some(_) => Err(RelayError::InvalidCheckIn("status must be in_progress, ok or error")),
        None => Err(RelayError::InvalidCheckIn("missing status")),
    }
}

pub async fn handle(
    state: &Arc<AppState>,
    request: Request<Incoming>,
    project_id: u64,
) -> Result<Response<Full<Bytes>>, RelayError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let rest = path
        .strip_prefix(&format!("/api/{project_id}/cron/"))
        .or_else(|| path.split_once("/cron/").map(|(_, rest)| rest))
        .unwrap_or_default();
    let (slug, path_key) = parse_path(rest)?;
    let slug = slug.to_string();
    let mut request_auth = auth::from_request(&parts.headers, parts.uri.query())?;
    if let Some(key) = path_key {
        if request_auth.is_some() {
            return Err(RelayError::MultipleAuth);
        }
        request_auth = Some(RequestAuth {
            public_key: key.to_string(),
            version: None,
            client: None,
            source: AuthSource::Query,
        });
    }
    let identity = identify(state, request_auth, project_id)?;
    let json_body = content_type(&parts) == "application/json";
    let query = parts.uri.query().unwrap_or_default().to_string();
    let rules = state.rules();
    let metrics = state.metrics.clone();
    let envelope = with_body(state, &parts, body, MAX_CHECK_IN_BYTES, move |body| {
        let check_in = if json_body {
            from_json(&slug, &body)?
        } else {
            from_query(&slug, &query)?
        };
        let mut headers = Map::new();
        headers.insert("event_id".into(), Value::String(ingest::new_event_id()));
        let mut envelope = Envelope::new(headers);
        let payload = serde_json::to_vec(&Value::Object(check_in)).map_err(|_| RelayError::Internal)?;
        let mut item = Item::new("check_in", Bytes::from(payload));
        item.headers_mut()
            .insert("content_type".into(), Value::String("application/json".into()));
        envelope.items.push(item);
        let envelope = scrub_envelope(envelope, &rules, &metrics, project_id);
        Ok((!envelope.items.is_empty()).then(|| envelope.to_bytes()))
    })
    .await?;
    // Sentry never answers a check-in with 429; the rate-limited check-in is dropped (and counted).
    let accepted = empty_json(StatusCode::ACCEPTED);
    queue(
        state,
        &parts,
        identity,
        envelope,
        Destination::Envelope,
        accepted,
        WhenLimited::Accept,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("nightly-backup/").unwrap(), ("nightly-backup", None));
        assert_eq!(
            parse_path("nightly_backup/e12d836b15bb49d7bbf99e64295d995b/").unwrap(),
            ("nightly_backup", Some("e12d836b15bb49d7bbf99e64295d995b"))
        );
        assert!(matches!(parse_path("/"), Err(RelayError::InvalidCheckIn(_))));
        assert!(matches!(parse_path("a b/"), Err(RelayError::InvalidCheckIn(_))));
        assert!(matches!(parse_path("job/not a key/"), Err(RelayError::InvalidAuth(_))));
    }

    #[test]
    fn query_check_ins() {
        let check_in = from_query("job", "status=ok&duration=1.5&environment=prod").unwrap();
        assert_eq!(check_in["status"], "ok");
        assert_eq!(check_in["monitor_slug"], "job");
        assert_eq!(check_in["check_in_id"], NIL_CHECK_IN_ID);
        assert_eq!(check_in["duration"], 1.5);
        assert!(matches!(
            from_query("job", "status=done"),
            Err(RelayError::InvalidCheckIn(_))
        ));
        assert!(matches!(from_query("job", ""), Err(RelayError::InvalidCheckIn(_))));
        assert!(matches!(
            from_query("job", "status=ok&duration=-1"),
            Err(RelayError::InvalidCheckIn(_))
        ));
    }

    #[test]
    fn json_check_ins_take_the_slug_from_the_path() {
        let check_in = from_json("job", br#"{"status":"in_progress","monitor_slug":"other"}"#).unwrap();
        assert_eq!(check_in["monitor_slug"], "job");
        assert!(matches!(from_json("job", b"[1]"), Err(RelayError::InvalidCheckIn(_))));
    }
}
