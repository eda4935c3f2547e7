//! The checker: compares a scrubbed envelope with what was planted and lists every leak, lost look-alike, broken
//! type and structural change, each with the planted location and where it was found.

use std::fmt::Write as _;
use std::net::IpAddr;

use scrub_relay::envelope::Envelope;
use serde_json::Value;

use crate::plant::{Case, Keep, Needle, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A secret is still in the output.
    Leak,
    /// A look-alike changed or disappeared.
    Lost,
    /// A typed field holds a value of the wrong type.
    Type,
    /// Items appeared, vanished, changed type or stopped parsing.
    Structure,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Leak => "LEAK",
            Kind::Lost => "LOST",
            Kind::Type => "TYPE",
            Kind::Structure => "STRUCTURE",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub case: String,
    /// The planted location (or capture path) the failure is about.
    pub planted: String,
    /// What was found and where.
    pub detail: String,
}

/// A scrubbed envelope, with each item's payload parsed once.
pub struct Output {
    pub header: Value,
    pub items: Vec<(String, Payload)>,
    /// The whole serialized envelope, lossily decoded, for substring searches.
    pub text: String,
}

pub enum Payload {
    Json(Value),
    Text(String),
}

impl Output {
    pub fn new(envelope: &Envelope) -> Output {
        let bytes = envelope.to_bytes();
        let items = envelope
            .items
            .iter()
            .map(|item| {
                let payload = match serde_json::from_slice::<Value>(item.payload()) {
                    Ok(v) if item.type_name() != "attachment" => Payload::Json(v),
                    _ => Payload::Text(String::from_utf8_lossy(item.payload()).into_owned()),
                };
                (item.type_name().to_owned(), payload)
            })
            .collect();
        Output {
            header: Value::Object(envelope.headers.clone()),
            items,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    fn root(&self, target: Target) -> Option<&Payload> {
        match target {
            Target::Header => None,
            Target::Item(i) => self.items.get(i).map(|(_, p)| p),
        }
    }

    fn value_at(&self, target: Target, pointer: &str) -> Option<&Value> {
        match target {
            Target::Header => self.header.pointer(pointer),
            Target::Item(_) => match self.root(target)? {
                Payload::Json(v) => v.pointer(pointer),
                Payload::Text(_) => None,
            },
        }
    }

    /// Every place (JSON pointer into header or item, or a text item) where the needle occurs.
    pub fn locate(&self, needle: &Needle) -> Vec<String> {
        let mut found = Vec::new();
        locate_in(&self.header, "header", needle, &mut found);
        for (i, (_, payload)) in self.items.iter().enumerate() {
            match payload {
                Payload::Json(v) => locate_in(v, &format!("item[{i}]"), needle, &mut found),
                Payload::Text(s) => {
                    if needle.found_in(s) {
                        found.push(format!("item[{i}](text) {}", excerpt(s, &needle.text)));
                    }
                }
            }
        }
        if found.is_empty() {
            found.push("(outside any payload: item headers?)".into());
        }
        found
    }
}

fn locate_in(value: &Value, path: &str, needle: &Needle, out: &mut Vec<String>) {
    match value {
        Value::String(s) if needle.found_in(s) => out.push(format!("{path} = {}", excerpt(s, &needle.text))),
        Value::Number(n) if needle.found_in(&n.to_string()) => out.push(format!("{path} = {n}")),
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                locate_in(v, &format!("{path}/{i}"), needle, out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let child = format!("{path}/{}", k.replace('~', "~0").replace('/', "~1"));
                if needle.found_in(k) {
                    out.push(format!("{child} (the key itself)"));
                }
                locate_in(v, &child, needle, out);
            }
        }
        _ => {}
    }
}

/// The start of a string (whole if short), for LOST details.
fn head(s: &str) -> String {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end < s.len() {
        format!("{:?}…", &s[..end])
    } else {
        format!("{s:?}")
    }
}

/// A short excerpt around the needle (or the start), so the table stays readable with 10 KB prompts.
fn excerpt(s: &str, needle: &str) -> String {
    let at = s.find(needle).unwrap_or(0);
    let mut start = at.saturating_sub(40);
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + needle.len() + 40).min(s.len());
    while !s.is_char_boundary(end) {
        end += 1;
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(&s[start..end]);
    if end < s.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Checks one processed planted case.
pub fn check_case(case: &Case, input: &Envelope, output: &Envelope, report_debug: &str) -> Vec<Failure> {
    let out = Output::new(output);
    let mut failures = Vec::new();
    let fail = |kind, planted: String, detail: String| Failure {
        kind,
        case: case.name.clone(),
        planted,
        detail,
    };

    if !case.allow_drops && input.items.len() != output.items.len() {
        failures.push(fail(
            Kind::Structure,
            "(envelope)".into(),
            format!(
                "{} items in, {} out (nothing planted should be dropped)",
                input.items.len(),
                output.items.len()
            ),
        ));
    }
    let aligned = if case.allow_drops { 0 } else { input.items.len() };
    for (i, (a, b)) in input.items.iter().zip(&output.items).take(aligned).enumerate() {
        if a.type_name() != b.type_name() {
            failures.push(fail(
                Kind::Structure,
                format!("item[{i}]"),
                format!("type {} became {}", a.type_name(), b.type_name()),
            ));
        }
        if a.type_name() != "attachment"
            && serde_json::from_slice::<Value>(a.payload()).is_ok()
            && serde_json::from_slice::<Value>(b.payload()).is_err()
        {
            failures.push(fail(
                Kind::Structure,
                format!("item[{i}]"),
                "JSON payload no longer parses".into(),
            ));
        }
    }

    for plant in &case.plants {
        for needle in &plant.gone {
            if needle.found_in(&out.text) {
                for place in out.locate(needle) {
                    failures.push(fail(
                        Kind::Leak,
                        plant.id(),
                        format!("{:?} still at {place}", needle.text),
                    ));
                }
            }
            if needle.found_in(report_debug) {
                failures.push(fail(
                    Kind::Leak,
                    plant.id(),
                    format!("{:?} appears in the processing report", needle.text),
                ));
            }
        }
        match &plant.keep {
            Keep::Nothing => {}
            Keep::Exact(expected) => {
                if plant.pointer.is_empty() {
                    continue;
                }
                match out.value_at(plant.target, &plant.pointer) {
                    Some(got) if got == expected => {}
                    Some(got) => failures.push(fail(Kind::Lost, plant.id(), format!("expected {expected}, got {got}"))),
                    None => failures.push(fail(
                        Kind::Lost,
                        plant.id(),
                        format!("expected {expected}, field is gone"),
                    )),
                }
            }
            Keep::Contains(parts) => {
                let got: Option<String> = if plant.pointer.is_empty() {
                    match out.root(plant.target) {
                        Some(Payload::Text(s)) => Some(s.clone()),
                        Some(Payload::Json(v)) => Some(v.to_string()),
                        None => None,
                    }
                } else {
                    out.value_at(plant.target, &plant.pointer).map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                };
                for part in parts {
                    match &got {
                        Some(s) if s.contains(part.as_str()) => {}
                        Some(s) => failures.push(fail(
                            Kind::Lost,
                            plant.id(),
                            format!("{part:?} missing from {}", head(s)),
                        )),
                        None => failures.push(fail(Kind::Lost, plant.id(), format!("{part:?} missing: field is gone"))),
                    }
                }
            }
        }
    }

    for (i, (_, payload)) in out.items.iter().enumerate() {
        if let Payload::Json(v) = payload {
            for problem in type_problems(v) {
                failures.push(fail(Kind::Type, format!("item[{i}]"), problem));
            }
        }
    }
    failures
}

/// Typed fields whose value no longer fits: attributes whose `value` disagrees with their `type`, and
/// `ip_address` fields holding something other than an IP (Sentry drops the field, or the event).
pub fn type_problems(root: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    walk_types(root, "", None, &mut problems);
    problems
}

fn walk_types(value: &Value, path: &str, key: Option<&str>, out: &mut Vec<String>) {
    if key == Some("_meta") {
        // Remarks about a field mirror its path; they are not the field.
        return;
    }
    if let Value::Object(map) = value {
        if let (Some(Value::String(ty)), Some(v)) = (map.get("type"), map.get("value")) {
            let in_attributes = path.contains("/attributes/");
            let fits = match ty.as_str() {
                "string" => v.is_string(),
                "integer" => v.is_i64() || v.is_u64(),
                "double" => v.is_number(),
                "boolean" => v.is_boolean(),
                "array" => v.is_array(),
                _ => true,
            };
            if in_attributes && !fits {
                out.push(format!("{path}: attribute of type {ty:?} holds {v}"));
            }
        }
    }
    if key == Some("ip_address") {
        let ok = match value {
            Value::Null => true,
            Value::String(s) => s == "{{auto}}" || s.parse::<IpAddr>().is_ok(),
            _ => false,
        };
        if !ok {
            out.push(format!(
                "{path}: ip_address holds {value}, not an IP (Sentry rejects it)"
            ));
        }
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                walk_types(v, &format!("{path}/{k}"), Some(k), out);
            }
        }
        Value::Array(list) => {
            for (i, v) in list.iter().enumerate() {
                walk_types(v, &format!("{path}/{i}"), None, out);
            }
        }
        _ => {}
    }
}

/// A readable table of failures, grouped by kind.
pub fn table(failures: &[Failure]) -> String {
    let mut sorted: Vec<&Failure> = failures.iter().collect();
    sorted.sort_by(|a, b| (a.kind, &a.case, &a.planted).cmp(&(b.kind, &b.case, &b.planted)));
    let w_case = sorted.iter().map(|f| f.case.len()).max().unwrap_or(4).max(4);
    let w_plant = sorted.iter().map(|f| f.planted.len()).max().unwrap_or(7).clamp(7, 70);
    let mut out = String::new();
    let counts = [Kind::Leak, Kind::Lost, Kind::Type, Kind::Structure]
        .map(|k| format!("{} {}", failures.iter().filter(|f| f.kind == k).count(), k.label()));
    let _ = writeln!(out, "\n{} failures: {}", failures.len(), counts.join(", "));
    let _ = writeln!(
        out,
        "{:<9} | {:<w_case$} | {:<w_plant$} | detail",
        "kind", "case", "planted"
    );
    let _ = writeln!(out, "{}", "-".repeat(9 + w_case + w_plant + 20));
    for f in sorted {
        let _ = writeln!(
            out,
            "{:<9} | {:<w_case$} | {:<w_plant$} | {}",
            f.kind.label(),
            f.case,
            f.planted,
            f.detail
        );
    }
    out
}
