//! Drop rules for health-check and static-file traffic: transactions by name or `request.url` path, and span-v2
//! segment spans (by `url.path`, `http.route` or name) together with their child spans.
//!
//! Routes are matched as paths, never as substrings: `/health/` drops `/health` and `/health/` but not
//! `/api/healthcare/providers`; the prefix `/static/*` drops `/static/app.js` but not `/static-pages/about`.

use std::collections::HashSet;

use serde_json::Value;

/// Compiled drop routes.
#[derive(Debug, Clone, Default)]
pub struct RouteMatcher {
    /// Exact paths without their trailing `/`.
    exact: HashSet<String>,
    /// Prefixes, each ending in `/` (or whatever preceded the `*`).
    prefixes: Vec<String>,
}

impl RouteMatcher {
    /// Builds the matcher from entries such as `/health/`, `/robots.txt` or `/static/*`.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a str>) -> Result<RouteMatcher, String> {
        let mut matcher = RouteMatcher::default();
        for route in routes {
            if !route.starts_with('/') {
                return Err(format!("route `{route}` must start with `/`"));
            }
            if let Some(prefix) = route.strip_suffix('*') {
                if prefix.contains('*') {
                    return Err(format!("route `{route}`: only a trailing `*` is supported"));
                }
                matcher.prefixes.push(prefix.to_string());
                // `/static/*` also drops `/static` itself.
                matcher.exact.insert(trim_slash(prefix).to_string());
            } else if route.contains('*') {
                return Err(format!("route `{route}`: only a trailing `*` is supported"));
            } else {
                matcher.exact.insert(trim_slash(route).to_string());
            }
        }
        Ok(matcher)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    /// Whether a URL path (query and fragment allowed, they are ignored) is a dropped route.
    pub fn matches_path(&self, path: &str) -> bool {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        if !path.starts_with('/') {
            return false;
        }
        self.exact.contains(trim_slash(path)) || self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
    }

    /// Whether a transaction or span name is a dropped route: `/health/`, `GET /health/`, or a full URL.
    pub fn matches_name(&self, name: &str) -> bool {
        let name = name.trim();
        let name = match name.split_once(' ') {
            Some((method, rest)) if is_http_method(method) => rest.trim(),
            _ => name,
        };
        match url_path(name) {
            Some(path) => self.matches_path(path),
            None => false,
        }
    }

    /// Whether a URL (absolute, or just a path) points at a dropped route.
    pub fn matches_url(&self, url: &str) -> bool {
        url_path(url.trim()).is_some_and(|path| self.matches_path(path))
    }
}

fn trim_slash(path: &str) -> &str {
    if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    }
}

fn is_http_method(word: &str) -> bool {
    matches!(
        word,
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" | "TRACE" | "CONNECT"
    )
}

/// The path of a URL or path-like string; `None` when it is neither.
pub fn url_path(text: &str) -> Option<&str> {
    if text.starts_with('/') {
        return Some(text);
    }
    let rest = text.split_once("://")?.1;
    Some(rest.find('/').map_or("/", |i| &rest[i..]))
}

/// Whether a transaction event hits a drop route, by its name or its `request.url`.
pub fn should_drop_transaction(event: &Value, routes: &RouteMatcher) -> bool {
    transaction_hits_route(
        event.get("transaction").and_then(Value::as_str),
        event.pointer("/request/url").and_then(Value::as_str),
        routes,
    )
}

/// Whether a transaction with this name and `request.url` hits a drop route.
pub fn transaction_hits_route(name: Option<&str>, url: Option<&str>, routes: &RouteMatcher) -> bool {
    !routes.is_empty()
        && (name.is_some_and(|name| routes.matches_name(name)) || url.is_some_and(|url| routes.matches_url(url)))
}

fn attribute_str<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    match span.get("attributes")?.get(key)? {
        Value::String(s) => Some(s),
        Value::Object(typed) => typed.get("value")?.as_str(),
        _ => None,
    }
}

/// The span attributes a segment's route is read from.
pub const SEGMENT_ROUTE_ATTRIBUTES: [&str; 4] = ["url.path", "http.route", "http.target", "url.full"];

/// Whether a v2 segment span hits a drop route (`url.path`, `http.route`, `url.full`, or its name).
pub fn is_dropped_segment(span: &Value, routes: &RouteMatcher) -> bool {
    span.get("is_segment").and_then(Value::as_bool) == Some(true)
        && segment_hits_route(
            span.get("name").and_then(Value::as_str),
            |key| attribute_str(span, key),
            routes,
        )
}

/// Whether a segment span with this name and these route attributes (see [`SEGMENT_ROUTE_ATTRIBUTES`]) hits a
/// drop route.
pub fn segment_hits_route<'a>(
    name: Option<&str>,
    attribute: impl Fn(&str) -> Option<&'a str>,
    routes: &RouteMatcher,
) -> bool {
    SEGMENT_ROUTE_ATTRIBUTES
        .iter()
        .any(|key| attribute(key).is_some_and(|value| route_attribute_hits(key, value, routes)))
        || name.is_some_and(|n| routes.matches_name(n))
}

/// Whether the value of one of the [`SEGMENT_ROUTE_ATTRIBUTES`] hits a drop route: `url.full` is a whole URL, the
/// others are paths.
pub fn route_attribute_hits(key: &str, value: &str, routes: &RouteMatcher) -> bool {
    if key == "url.full" {
        routes.matches_url(value)
    } else {
        routes.matches_path(value)
    }
}

/// Removes dropped segment spans and every span below them (by parent chain or `sentry.segment.id`) from a span-v2
/// container's `items`. Returns how many spans were removed.
pub fn filter_span_items(items: &mut Vec<Value>, routes: &RouteMatcher) -> usize {
    if routes.is_empty() {
        return 0;
    }
    let links: Vec<SpanLinks<'_>> = items
        .iter()
        .map(|span| SpanLinks {
            id: span.get("span_id").and_then(Value::as_str),
            parent: span.get("parent_span_id").and_then(Value::as_str),
            segment: attribute_str(span, "sentry.segment.id"),
            dropped_segment: is_dropped_segment(span, routes),
        })
        .collect();
    let Some(remove) = spans_to_remove(&links) else {
        return 0;
    };
    let len = items.len();
    let mut index = 0;
    items.retain(|_| {
        index += 1;
        !remove[index - 1]
    });
    len - items.len()
}

/// What deciding a span's removal reads of it (the streaming walk reads the same from JSON text).
#[derive(Debug, Default)]
pub struct SpanLinks<'a> {
    /// `span_id`, when a string.
    pub id: Option<&'a str>,
    /// `parent_span_id`, when a string.
    pub parent: Option<&'a str>,
    /// The `sentry.segment.id` attribute.
    pub segment: Option<&'a str>,
    /// A segment span on a drop route ([`is_dropped_segment`]).
    pub dropped_segment: bool,
}

/// Which spans go: dropped segments that have an id and every span below them, by parent chain or segment id, then
/// every span holding one of those ids. `None` when no span goes.
pub fn spans_to_remove(spans: &[SpanLinks<'_>]) -> Option<Vec<bool>> {
    let mut dropped: HashSet<&str> = spans
        .iter()
        .filter(|span| span.dropped_segment)
        .filter_map(|span| span.id)
        .collect();
    if dropped.is_empty() {
        return None;
    }
    // Children can appear before their parents, so repeat until nothing new is found (at most one pass per level).
    loop {
        let before = dropped.len();
        for span in spans {
            let Some(id) = span.id else {
                continue;
            };
            if dropped.contains(id) {
                continue;
            }
            if span.parent.is_some_and(|p| dropped.contains(p)) || span.segment.is_some_and(|s| dropped.contains(s)) {
                dropped.insert(id);
            }
        }
        if dropped.len() == before {
            break;
        }
    }
    Some(
        spans
            .iter()
            .map(|span| span.id.is_some_and(|id| dropped.contains(id)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn routes() -> RouteMatcher {
        RouteMatcher::new([
            "/health/",
            "/ping/",
            "/robots.txt",
            "/static/*",
            "/health_check",
            "/favicon.ico",
        ])
        .unwrap()
    }

    #[test]
    fn drops_health_and_static_routes() {
        let r = routes();
        for name in [
            "/health/",
            "/health",
            "GET /health/",
            "/ping/",
            "/ping",
            "/robots.txt",
            "/static/app.js",
            "/static",
            "/health_check",
            "/favicon.ico",
            "https://shop.example.com/health/",
            "/health/?probe=1",
            "HEAD /ping",
        ] {
            assert!(r.matches_name(name), "{name} should be dropped");
        }
    }

    #[test]
    fn keeps_real_traffic() {
        let r = routes();
        for name in [
            "/api/healthcare/providers",
            "/static-pages/about",
            "/pingdom/report",
            "/",
            "GET /checkout",
            "/api/health/status",
            "health",
            "POST /api/chat",
            "/health_checks",
            "/robots.txt.bak",
        ] {
            assert!(!r.matches_name(name), "{name} should survive");
        }
    }

    #[test]
    fn transaction_by_name_or_url() {
        let r = routes();
        assert!(should_drop_transaction(&json!({"transaction": "GET /health/"}), &r));
        assert!(should_drop_transaction(
            &json!({"transaction": "generic WSGI request", "request": {"url": "https://x.io/ping/"}}),
            &r
        ));
        assert!(!should_drop_transaction(
            &json!({"transaction": "/api/healthcare/providers"}),
            &r
        ));
    }

    #[test]
    fn segment_and_children_are_removed() {
        let r = routes();
        let mut items = vec![
            json!({"span_id": "a", "is_segment": true, "name": "GET", "attributes": {"url.path": {"value": "/health/", "type": "string"}}}),
            json!({"span_id": "b", "parent_span_id": "a", "name": "db"}),
            json!({"span_id": "c", "parent_span_id": "b", "name": "inner"}),
            json!({"span_id": "d", "is_segment": true, "name": "GET", "attributes": {"url.path": {"value": "/checkout", "type": "string"}}}),
            json!({"span_id": "e", "parent_span_id": "x", "attributes": {"sentry.segment.id": {"value": "a", "type": "string"}}}),
        ];
        assert_eq!(filter_span_items(&mut items, &r), 4);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["span_id"], "d");
    }

    #[test]
    fn bad_routes_are_rejected() {
        assert!(RouteMatcher::new(["health"]).is_err());
        assert!(RouteMatcher::new(["/a*b"]).is_err());
    }
}
