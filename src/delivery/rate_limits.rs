//! Sentry rate limits: parsing the upstream's `X-Sentry-Rate-Limits` and `Retry-After`, remembering them per project
//! and data category until they expire, and enforcing them on envelopes before they are accepted or sent.
//!
//! The header is a comma-separated list of `<seconds>:<categories>:<scope>[:<reason_code>[:<namespaces>]]`, where
//! `<categories>` is a `;`-separated list of data category names and an empty list means every category. A 429 without
//! the header limits every category for `Retry-After` seconds. This is what Sentry's SDKs and Sentry Relay obey; we
//! obey it too, so the relay never sends what the upstream would refuse, and we pass it on to SDKs so they stop sending
//! what would be thrown away.
//!
//! Limits are remembered per project only: the relay does not know which projects share an organization or which keys
//! share a project, so an `organization` or `key` scoped limit is applied to the project it was answered for.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::envelope::{Envelope, ItemType};

/// How long to back off after a 429 that carries neither `X-Sentry-Rate-Limits` nor a usable `Retry-After`.
/// Sentry's SDKs use the same 60 seconds.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Upper bound on a limit we remember, so a garbage header cannot silence a project for years.
const MAX_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// The data categories rate limits are expressed in, named as Sentry names them on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataCategory {
    Default,
    Error,
    Transaction,
    Security,
    Attachment,
    Session,
    Profile,
    ProfileChunk,
    Replay,
    Monitor,
    Span,
    LogItem,
    Feedback,
    UserReport,
    TraceMetric,
    MetricBucket,
    Internal,
}

impl DataCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            DataCategory::Default => "default",
            DataCategory::Error => "error",
            DataCategory::Transaction => "transaction",
            DataCategory::Security => "security",
            DataCategory::Attachment => "attachment",
            DataCategory::Session => "session",
            DataCategory::Profile => "profile",
            DataCategory::ProfileChunk => "profile_chunk",
            DataCategory::Replay => "replay",
            DataCategory::Monitor => "monitor",
            DataCategory::Span => "span",
            DataCategory::LogItem => "log_item",
            DataCategory::Feedback => "feedback",
            DataCategory::UserReport => "user_report_v2",
            DataCategory::TraceMetric => "trace_metric",
            DataCategory::MetricBucket => "metric_bucket",
            DataCategory::Internal => "internal",
        }
    }

    /// The category named on the wire, or `None` for names we never map an item to (`log_byte`, `profile_duration`,
    /// ...): a limit on those cannot drop anything we send.
    pub fn from_name(name: &str) -> Option<DataCategory> {
        Some(match name {
            "default" => DataCategory::Default,
            "error" => DataCategory::Error,
            "transaction" => DataCategory::Transaction,
            "security" => DataCategory::Security,
            "attachment" => DataCategory::Attachment,
            "session" => DataCategory::Session,
            "profile" => DataCategory::Profile,
            "profile_chunk" => DataCategory::ProfileChunk,
            "replay" => DataCategory::Replay,
            "monitor" => DataCategory::Monitor,
            "span" => DataCategory::Span,
            "log_item" => DataCategory::LogItem,
            "feedback" => DataCategory::Feedback,
            "user_report_v2" => DataCategory::UserReport,
            "trace_metric" => DataCategory::TraceMetric,
            "metric_bucket" => DataCategory::MetricBucket,
            "internal" => DataCategory::Internal,
            _ => return None,
        })
    }

    /// The category an envelope item counts against, as Sentry counts it. Items of unknown types count against no
    /// category and are never dropped by a rate limit (only by an "all categories" one).
    pub fn of_item(type_name: &str) -> Option<DataCategory> {
        Some(match ItemType::from_name(type_name) {
            ItemType::Event => DataCategory::Error,
            ItemType::Transaction => DataCategory::Transaction,
            ItemType::Span => DataCategory::Span,
            ItemType::Log => DataCategory::LogItem,
            ItemType::TraceMetric => DataCategory::TraceMetric,
            ItemType::Session | ItemType::Sessions => DataCategory::Session,
            ItemType::ClientReport => DataCategory::Internal,
            ItemType::CheckIn => DataCategory::Monitor,
            ItemType::Attachment => DataCategory::Attachment,
            ItemType::Feedback => DataCategory::Feedback,
            ItemType::UserReport => DataCategory::UserReport,
            ItemType::ReplayEvent | ItemType::ReplayRecording | ItemType::ReplayVideo => DataCategory::Replay,
            ItemType::Profile => DataCategory::Profile,
            ItemType::ProfileChunk => DataCategory::ProfileChunk,
            ItemType::Statsd => DataCategory::MetricBucket,
            ItemType::RawSecurity => DataCategory::Security,
            // Sentry ignores rate limits for NEL reports.
            ItemType::Nel => return None,
            ItemType::Other => match type_name {
                "security" | "raw_security" => DataCategory::Security,
                "otel_log" => DataCategory::LogItem,
                "otel_span" | "otel_traces_data" => DataCategory::Span,
                "metric_buckets" => DataCategory::MetricBucket,
                _ => return None,
            },
        })
    }
}

/// One parsed entry of `X-Sentry-Rate-Limits`. An empty `categories` means every category.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub duration: Duration,
    pub categories: Vec<DataCategory>,
}

/// Parses `X-Sentry-Rate-Limits`. Malformed entries are skipped (the upstream's header is not ours to reject), and
/// an entry that names only categories we do not know limits nothing.
pub fn parse_rate_limits(header: &str) -> Vec<RateLimit> {
    let mut limits = Vec::new();
    for entry in header.split(',') {
        let mut fields = entry.trim().split(':');
        let Some(seconds) = fields.next().and_then(parse_seconds) else {
            continue;
        };
        let categories_field = fields.next().unwrap_or("").trim();
        let categories: Vec<DataCategory> = if categories_field.is_empty() {
            Vec::new()
        } else {
            let known: Vec<DataCategory> = categories_field
                .split(';')
                .filter_map(DataCategory::from_name)
                .collect();
            if known.is_empty() {
                continue;
            }
            known
        };
        limits.push(RateLimit {
            duration: seconds,
            categories,
        });
    }
    limits
}

/// Parses `Retry-After` in its delay-seconds form. The HTTP-date form is not used by Sentry; callers fall back to
/// [`DEFAULT_RETRY_AFTER`] for it.
pub fn parse_retry_after(header: &str) -> Option<Duration> {
    parse_seconds(header)
}

fn parse_seconds(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().parse().ok()?;
    if !seconds.is_finite() || seconds < 0.0 {
        return None;
    }
    Some(Duration::from_secs_f64(seconds.ceil()).min(MAX_LIMIT))
}

/// The limits in force for one project.
#[derive(Debug, Default)]
struct ProjectLimits {
    all: Option<Instant>,
    by_category: HashMap<DataCategory, Instant>,
}

impl ProjectLimits {
    fn until(&self, category: Option<DataCategory>, now: Instant) -> Option<Instant> {
        self.limit(category, now).map(|(_, until)| until)
    }

    /// The limit that holds `category` back longest: `(Some(category), until)` for a limit on that category,
    /// `(None, until)` for a limit on every category.
    fn limit(&self, category: Option<DataCategory>, now: Instant) -> Option<(Option<DataCategory>, Instant)> {
        let specific = category.and_then(|c| self.by_category.get(&c).map(|until| (Some(c), *until)));
        let all = self.all.map(|until| (None, until));
        [specific, all]
            .into_iter()
            .flatten()
            .filter(|(_, until)| *until > now)
            .max_by_key(|(_, until)| *until)
    }

    fn is_expired(&self, now: Instant) -> bool {
        self.all.is_none_or(|until| until <= now) && self.by_category.values().all(|until| *until <= now)
    }
}

/// What the SDK is told when every item it sent is rate limited: status 429 with these two headers.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimited {
    /// Whole seconds until the last of the limits expires, for `Retry-After`.
    pub retry_after_secs: u64,
    /// The `X-Sentry-Rate-Limits` value naming the limited categories.
    pub header: String,
}

/// Rate limits remembered from upstream answers, per project and category, with their expiry.
#[derive(Debug, Default)]
pub struct RateLimits {
    projects: Mutex<HashMap<u64, ProjectLimits>>,
}

impl RateLimits {
    pub fn new() -> RateLimits {
        RateLimits::default()
    }

    /// Remembers what an upstream answer said about `project_id`: the `X-Sentry-Rate-Limits` header when present,
    /// otherwise, for a 429, `Retry-After` (or the default) over every category. Returns whether anything was recorded.
    pub fn record_response(
        &self,
        project_id: u64,
        status: u16,
        rate_limits: Option<&str>,
        retry_after: Option<&str>,
        now: Instant,
    ) -> bool {
        let mut limits = rate_limits.map(parse_rate_limits).unwrap_or_default();
        if limits.is_empty() && status == 429 {
            let duration = retry_after.and_then(parse_retry_after).unwrap_or(DEFAULT_RETRY_AFTER);
            limits.push(RateLimit {
                duration,
                categories: Vec::new(),
            });
        }
        if limits.is_empty() {
            return false;
        }
        let mut projects = self.lock();
        projects.retain(|_, limits| !limits.is_expired(now));
        let project = projects.entry(project_id).or_default();
        for limit in limits {
            let until = now + limit.duration;
            if limit.categories.is_empty() {
                project.all = Some(project.all.map_or(until, |old| old.max(until)));
            }
            for category in limit.categories {
                let slot = project.by_category.entry(category).or_insert(until);
                *slot = (*slot).max(until);
            }
        }
        true
    }

    /// True when any limit is in force for `project_id`: a cheap check before parsing an envelope.
    pub fn has_limits(&self, project_id: u64, now: Instant) -> bool {
        self.lock()
            .get(&project_id)
            .is_some_and(|limits| !limits.is_expired(now))
    }

    /// When the limit on `category` (or on every category) for `project_id` ends, if one is in force.
    pub fn limited_until(&self, project_id: u64, category: Option<DataCategory>, now: Instant) -> Option<Instant> {
        self.lock()
            .get(&project_id)
            .and_then(|limits| limits.until(category, now))
    }

    /// Removes the items of `envelope` whose category is limited and returns their type names (for
    /// `items_dropped{reason="rate_limited"}`). When nothing is left, the envelope is untouched and the answer for the
    /// SDK is returned instead: every item was limited, so nothing should be accepted.
    pub fn enforce(&self, project_id: u64, envelope: &mut Envelope, now: Instant) -> Result<Vec<String>, RateLimited> {
        let projects = self.lock();
        let Some(limits) = projects.get(&project_id) else {
            return Ok(Vec::new());
        };
        let verdicts: Vec<Option<(Option<DataCategory>, Instant)>> = envelope
            .items
            .iter()
            .map(|item| limits.limit(DataCategory::of_item(item.type_name()), now))
            .collect();
        drop(projects);
        if verdicts.iter().all(Option::is_none) {
            return Ok(Vec::new());
        }
        if !envelope.items.is_empty() && verdicts.iter().all(Option::is_some) {
            let limited: Vec<(Option<DataCategory>, Instant)> = verdicts.into_iter().flatten().collect();
            return Err(rate_limited_answer(&limited, now));
        }
        let mut dropped = Vec::new();
        let mut verdicts = verdicts.into_iter();
        envelope.items.retain(|item| {
            let limited = verdicts.next().flatten().is_some();
            if limited {
                dropped.push(item.type_name().to_string());
            }
            !limited
        });
        Ok(dropped)
    }

    /// Every limit in force for `project_id`, as an `X-Sentry-Rate-Limits` value, so an accepted request can tell
    /// the SDK about categories it should stop sending (as Sentry does on a 200). `None` when nothing is limited.
    pub fn active_header(&self, project_id: u64, now: Instant) -> Option<String> {
        let projects = self.lock();
        let limits = projects.get(&project_id)?;
        let mut active: Vec<(Option<DataCategory>, Instant)> = limits
            .by_category
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(c, until)| (Some(*c), *until))
            .collect();
        active.sort();
        if let Some(until) = limits.all.filter(|until| *until > now) {
            active.push((None, until));
        }
        (!active.is_empty()).then(|| rate_limited_answer(&active, now).header)
    }

    /// The latest expiry among the limits that cover every item of `envelope`, or `None` when at least one item may
    /// be sent now. The delivery workers use it to hold an envelope back instead of sending what would be refused.
    pub fn all_limited_until(&self, project_id: u64, envelope: &Envelope, now: Instant) -> Option<Instant> {
        let projects = self.lock();
        let limits = projects.get(&project_id)?;
        let mut latest: Option<Instant> = None;
        for item in &envelope.items {
            let until = limits.until(DataCategory::of_item(item.type_name()), now)?;
            latest = Some(latest.map_or(until, |l| l.max(until)));
        }
        latest
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ProjectLimits>> {
        // The map stays consistent even if a holder panicked: every update is a single insert or max.
        self.projects.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Builds the 429 headers for the SDK: one header entry per limited category (or one for "all") with the seconds
/// remaining, rounded up so the SDK never comes back a moment too early.
fn rate_limited_answer(limited: &[(Option<DataCategory>, Instant)], now: Instant) -> RateLimited {
    let mut per_category: Vec<(Option<DataCategory>, u64)> = Vec::new();
    for (category, until) in limited {
        let remaining = until.saturating_duration_since(now);
        let secs = remaining.as_secs() + u64::from(remaining.subsec_nanos() > 0);
        let secs = secs.max(1);
        match per_category.iter_mut().find(|(c, _)| c == category) {
            Some((_, existing)) => *existing = (*existing).max(secs),
            None => per_category.push((*category, secs)),
        }
    }
    let mut header = String::new();
    for (category, secs) in &per_category {
        if !header.is_empty() {
            header.push_str(", ");
        }
        let name = category.map_or("", DataCategory::as_str);
        // Writing to a String cannot fail.
        let _ = write!(header, "{secs}:{name}:project");
    }
    let retry_after_secs = per_category.iter().map(|(_, secs)| *secs).max().unwrap_or(1);
    RateLimited {
        retry_after_secs,
        header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Item;
    use bytes::Bytes;

    fn envelope(types: &[&str]) -> Envelope {
        let mut envelope = Envelope::new(serde_json::Map::new());
        for ty in types {
            envelope.items.push(Item::new(ty, Bytes::from_static(b"{}")));
        }
        envelope
    }

    #[test]
    fn parses_sentry_header_forms() {
        let limits =
            parse_rate_limits("60:error;transaction:organization, 2700::project:quota_exceeded, 10:log_item:key:x:ns");
        assert_eq!(
            limits,
            vec![
                RateLimit {
                    duration: Duration::from_secs(60),
                    categories: vec![DataCategory::Error, DataCategory::Transaction]
                },
                RateLimit {
                    duration: Duration::from_secs(2700),
                    categories: vec![]
                },
                RateLimit {
                    duration: Duration::from_secs(10),
                    categories: vec![DataCategory::LogItem]
                },
            ]
        );
    }

    #[test]
    fn skips_garbage_and_unknown_categories() {
        assert_eq!(parse_rate_limits("abc:error:project"), vec![], "non-numeric seconds");
        assert_eq!(parse_rate_limits("-5:error:project"), vec![], "negative seconds");
        assert_eq!(
            parse_rate_limits("60:profile_duration:project"),
            vec![],
            "only unknown categories limit nothing"
        );
        assert_eq!(parse_rate_limits(""), vec![]);
        let limits = parse_rate_limits("1.2:span;bogus:project");
        assert_eq!(
            limits,
            vec![RateLimit {
                duration: Duration::from_secs(2),
                categories: vec![DataCategory::Span]
            }]
        );
        let huge = parse_rate_limits("99999999999::project");
        assert_eq!(huge[0].duration, MAX_LIMIT, "capped at a day");
    }

    #[test]
    fn maps_item_types_like_sentry() {
        let cases = [
            ("event", Some(DataCategory::Error)),
            ("transaction", Some(DataCategory::Transaction)),
            ("span", Some(DataCategory::Span)),
            ("log", Some(DataCategory::LogItem)),
            ("session", Some(DataCategory::Session)),
            ("sessions", Some(DataCategory::Session)),
            ("attachment", Some(DataCategory::Attachment)),
            ("check_in", Some(DataCategory::Monitor)),
            ("feedback", Some(DataCategory::Feedback)),
            ("trace_metric", Some(DataCategory::TraceMetric)),
            ("client_report", Some(DataCategory::Internal)),
            ("replay_recording", Some(DataCategory::Replay)),
            ("raw_security", Some(DataCategory::Security)),
            ("something_new", None),
        ];
        for (ty, expected) in cases {
            assert_eq!(DataCategory::of_item(ty), expected, "item type {ty}");
        }
    }

    #[test]
    fn enforce_drops_limited_items_and_keeps_the_rest() {
        let limits = RateLimits::new();
        let now = Instant::now();
        assert!(limits.record_response(7, 200, Some("60:error:project"), None, now));
        let mut env = envelope(&["event", "attachment", "transaction"]);
        let dropped = limits
            .enforce(7, &mut env, now)
            .expect("transaction and attachment still flow");
        assert_eq!(dropped, vec!["event"]);
        let left: Vec<&str> = env.items.iter().map(|i| i.type_name()).collect();
        assert_eq!(left, vec!["attachment", "transaction"]);

        let mut other_project = envelope(&["event"]);
        assert_eq!(
            limits.enforce(8, &mut other_project, now),
            Ok(vec![]),
            "limits are per project"
        );
    }

    #[test]
    fn enforce_answers_429_when_nothing_is_left() {
        let limits = RateLimits::new();
        let now = Instant::now();
        limits.record_response(7, 429, Some("60:error:project, 30:attachment:project"), Some("60"), now);
        let mut env = envelope(&["event", "attachment"]);
        let answer = limits
            .enforce(7, &mut env, now + Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(answer.retry_after_secs, 60);
        assert_eq!(answer.header, "60:error:project, 30:attachment:project");
        assert_eq!(env.items.len(), 2, "a refused envelope is left as it was");
    }

    #[test]
    fn a_429_without_header_limits_every_category() {
        let limits = RateLimits::new();
        let now = Instant::now();
        limits.record_response(1, 429, None, Some("5"), now);
        let mut env = envelope(&["transaction", "something_new"]);
        let answer = limits.enforce(1, &mut env, now).unwrap_err();
        assert_eq!(
            answer,
            RateLimited {
                retry_after_secs: 5,
                header: "5::project".into()
            }
        );

        let defaults = RateLimits::new();
        defaults.record_response(1, 429, None, Some("Wed, 21 Oct 2015 07:28:00 GMT"), now);
        let until = defaults
            .limited_until(1, Some(DataCategory::Span), now)
            .expect("limited");
        assert_eq!(
            until - now,
            DEFAULT_RETRY_AFTER,
            "an HTTP-date Retry-After falls back to the default"
        );
    }

    #[test]
    fn limits_expire() {
        let limits = RateLimits::new();
        let now = Instant::now();
        limits.record_response(1, 200, Some("10:transaction:project"), None, now);
        assert!(
            limits
                .limited_until(1, Some(DataCategory::Transaction), now + Duration::from_secs(9))
                .is_some()
        );
        assert!(
            limits
                .limited_until(1, Some(DataCategory::Transaction), now + Duration::from_secs(10))
                .is_none()
        );
        let mut env = envelope(&["transaction"]);
        assert_eq!(limits.enforce(1, &mut env, now + Duration::from_secs(11)), Ok(vec![]));
    }

    #[test]
    fn a_200_without_header_records_nothing() {
        let limits = RateLimits::new();
        assert!(!limits.record_response(1, 200, None, Some("30"), Instant::now()));
        assert!(
            !limits.record_response(1, 503, None, Some("30"), Instant::now()),
            "5xx is a retry, not a limit"
        );
    }

    #[test]
    fn active_header_lists_what_is_limited() {
        let limits = RateLimits::new();
        let now = Instant::now();
        assert_eq!(limits.active_header(1, now), None);
        limits.record_response(1, 200, Some("10:transaction:project, 20:error:project"), None, now);
        assert_eq!(
            limits.active_header(1, now).as_deref(),
            Some("20:error:project, 10:transaction:project")
        );
        assert_eq!(
            limits.active_header(1, now + Duration::from_secs(15)).as_deref(),
            Some("5:error:project")
        );
        assert_eq!(limits.active_header(1, now + Duration::from_secs(20)), None);
    }

    #[test]
    fn all_limited_until_needs_every_item_limited() {
        let limits = RateLimits::new();
        let now = Instant::now();
        limits.record_response(1, 200, Some("10:error:project, 20:attachment:project"), None, now);
        assert_eq!(
            limits.all_limited_until(1, &envelope(&["event", "attachment"]), now),
            Some(now + Duration::from_secs(20))
        );
        assert_eq!(limits.all_limited_until(1, &envelope(&["event", "log"]), now), None);
        assert_eq!(limits.all_limited_until(2, &envelope(&["event"]), now), None);
    }
}
