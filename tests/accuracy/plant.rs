//! The planting toolkit: builds an envelope from a real SDK capture (or from scratch), puts secrets and look-alikes
//! at JSON pointers, and remembers each one so the checker can say exactly which planted value leaked or got lost.

use std::path::PathBuf;

use bytes::Bytes;
use regex::Regex;
use scrub_relay::envelope::{Envelope, Item};
use serde_json::{Map, Value};

/// Where a planted value sits: the envelope header or an item's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Header,
    Item(usize),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Header => write!(f, "header"),
            Target::Item(i) => write!(f, "item[{i}]"),
        }
    }
}

/// A secret substring that must not appear anywhere in the scrubbed envelope.
#[derive(Clone, Debug)]
pub struct Needle {
    pub text: String,
    /// Cards, SSNs and phones are also searched as their digits with any (or no) separators in between, so
    /// `4111111111111111` or `4111-1111-1111-1111` in the output still counts as a leak of `4111 1111 1111 1111`.
    pub digits: Option<Regex>,
}

/// A plain secret substring (searched raw, JSON-escaped and double-JSON-escaped).
pub fn t(text: &str) -> Needle {
    Needle {
        text: text.to_owned(),
        digits: None,
    }
}

/// A numeric secret (card, SSN, phone, PIN): also searched as its digits with arbitrary separators.
pub fn d(text: &str) -> Needle {
    let digits: Vec<String> = text.chars().filter(char::is_ascii_digit).map(String::from).collect();
    assert!(
        digits.len() >= 4,
        "fixture bug: digit needle {text:?} is too short to search for"
    );
    let pattern = format!(r"(?:^|[^0-9])({})(?:[^0-9]|$)", digits.join(r"[\s().+/_-]{0,3}"));
    Needle {
        text: text.to_owned(),
        digits: Some(Regex::new(&pattern).expect("digit needle pattern is valid")),
    }
}

impl Needle {
    /// Every form this secret can take in serialized output.
    pub fn forms(&self) -> Vec<String> {
        let mut forms = vec![self.text.clone()];
        let escaped = json_escape(&self.text);
        if escaped != self.text {
            forms.push(escaped.clone());
        }
        let twice = json_escape(&escaped);
        if twice != escaped {
            forms.push(twice);
        }
        forms
    }

    /// Number of occurrences in `haystack`, in any form.
    pub fn count_in(&self, haystack: &str) -> usize {
        let raw: usize = self
            .forms()
            .iter()
            .map(|f| haystack.matches(f.as_str()).count())
            .max()
            .unwrap_or(0);
        match &self.digits {
            Some(re) => raw.max(count_overlapping(re, haystack)),
            None => raw,
        }
    }

    pub fn found_in(&self, haystack: &str) -> bool {
        self.count_in(haystack) > 0
    }
}

fn count_overlapping(re: &Regex, haystack: &str) -> usize {
    // The boundary groups consume one character each side; restart just after the match start so adjacent
    // occurrences separated by a single character are still counted.
    let mut count = 0;
    let mut at = 0;
    while at <= haystack.len() {
        match re.captures_at(haystack, at) {
            Some(c) => {
                count += 1;
                let m = c.get(1).expect("group 1 always participates");
                at = m.end();
            }
            None => break,
        }
    }
    count
}

fn json_escape(s: &str) -> String {
    let quoted = serde_json::to_string(s).expect("strings serialize");
    quoted[1..quoted.len() - 1].to_owned()
}

/// What must still be true of a planted location after scrubbing.
#[derive(Clone, Debug)]
pub enum Keep {
    /// Nothing: the location holds only secrets.
    Nothing,
    /// The value at the location must be exactly this (type and content).
    Exact(Value),
    /// The string at the location must still contain each of these substrings.
    Contains(Vec<String>),
}

/// One planted location.
#[derive(Clone, Debug)]
pub struct Plant {
    pub target: Target,
    /// JSON pointer inside the target; `""` for a whole text attachment.
    pub pointer: String,
    pub gone: Vec<Needle>,
    pub keep: Keep,
    /// How often each needle was written here (a sentence may name the same secret twice).
    pub written: Vec<usize>,
}

impl Plant {
    pub fn id(&self) -> String {
        format!(
            "{}{}",
            self.target,
            if self.pointer.is_empty() {
                "(text)".into()
            } else {
                self.pointer.clone()
            }
        )
    }
}

/// One planted envelope ready to process.
pub struct Case {
    pub name: String,
    pub bytes: Bytes,
    pub plants: Vec<Plant>,
    /// The policy may drop an item of this case (unparseable JSON): only leaks are checked for it.
    pub allow_drops: bool,
}

enum Body {
    Json(Value),
    Text(String),
    Raw(Bytes),
}

/// Builds a planted envelope.
pub struct CaseBuilder {
    name: String,
    header: Value,
    items: Vec<(Map<String, Value>, Body)>,
    plants: Vec<Plant>,
    allow_drops: bool,
}

/// The path of a capture under `tests/fixtures/sdk/`, decompressed copy preferred.
pub fn capture_path(capture: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sdk");
    let decompressed = dir.join(format!("{capture}.envelope"));
    if decompressed.exists() {
        decompressed
    } else {
        dir.join(format!("{capture}.body"))
    }
}

pub fn load_capture(capture: &str) -> Bytes {
    let path = capture_path(capture);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())))
}

impl CaseBuilder {
    /// Starts from a real capture; JSON items (not attachments) become editable values.
    pub fn from_capture(name: &str, capture: &str) -> CaseBuilder {
        let envelope = Envelope::parse(load_capture(capture)).unwrap_or_else(|e| panic!("{capture}: {e}"));
        let items = envelope
            .items
            .iter()
            .map(|item| {
                let body = if item.type_name() == "attachment" {
                    match std::str::from_utf8(item.payload()) {
                        Ok(text) => Body::Text(text.to_owned()),
                        Err(_) => Body::Raw(item.payload().clone()),
                    }
                } else {
                    match serde_json::from_slice(item.payload()) {
                        Ok(value) => Body::Json(value),
                        Err(_) => Body::Raw(item.payload().clone()),
                    }
                };
                let mut headers = item.headers().clone();
                headers.remove("length");
                (headers, body)
            })
            .collect();
        CaseBuilder {
            name: name.to_owned(),
            header: Value::Object(envelope.headers),
            items,
            plants: Vec::new(),
            allow_drops: false,
        }
    }

    pub fn add_json(&mut self, headers: Value, payload: Value) -> usize {
        self.items.push((as_map(headers), Body::Json(payload)));
        self.items.len() - 1
    }

    /// Adds a text attachment whose content holds secrets and look-alikes.
    pub fn add_text(&mut self, headers: Value, text: &str, gone: &[Needle], keep: &[&str]) -> usize {
        self.items.push((as_map(headers), Body::Text(text.to_owned())));
        let target = Target::Item(self.items.len() - 1);
        let written = gone.iter().map(|n| n.count_in(text)).collect();
        let keep = if keep.is_empty() {
            Keep::Nothing
        } else {
            Keep::Contains(keep.iter().map(|s| s.to_string()).collect())
        };
        self.plants.push(Plant {
            target,
            pointer: String::new(),
            gone: gone.to_vec(),
            keep,
            written,
        });
        self.items.len() - 1
    }

    /// Adds an item whose payload is written as given (e.g. JSON that does not parse). The relay may drop it, so
    /// the case stops checking item counts.
    pub fn add_raw(&mut self, headers: Value, text: &str, gone: &[Needle]) -> usize {
        self.items
            .push((as_map(headers), Body::Raw(Bytes::from(text.to_owned()))));
        let target = Target::Item(self.items.len() - 1);
        let written = gone.iter().map(|n| n.count_in(text)).collect();
        self.plants.push(Plant {
            target,
            pointer: String::new(),
            gone: gone.to_vec(),
            keep: Keep::Nothing,
            written,
        });
        self.allow_drops = true;
        self.items.len() - 1
    }

    /// Keeps only the listed items (in order), e.g. to leave out a health-check transaction the filter would drop.
    pub fn retain_items(&mut self, keep: &[usize]) {
        assert!(self.plants.is_empty(), "retain_items must run before planting");
        let mut items: Vec<_> = std::mem::take(&mut self.items).into_iter().map(Some).collect();
        self.items = keep
            .iter()
            .map(|&i| items[i].take().expect("item listed once"))
            .collect();
    }

    /// Direct access to an item's JSON payload for shape changes that plant nothing.
    pub fn json_mut(&mut self, item: usize) -> &mut Value {
        match &mut self.items[item].1 {
            Body::Json(v) => v,
            _ => panic!("fixture bug: item {item} of {} is not JSON", self.name),
        }
    }

    pub fn item_header_mut(&mut self, item: usize) -> &mut Map<String, Value> {
        &mut self.items[item].0
    }

    fn root(&mut self, target: Target) -> &mut Value {
        match target {
            Target::Header => &mut self.header,
            Target::Item(i) => self.json_mut(i),
        }
    }

    fn plant(&mut self, target: Target, pointer: &str, value: Value, gone: &[Needle], keep: Keep) {
        let serialized = serde_json::to_string(&value).expect("values serialize");
        // A secret planted as an object key is written as the key, so count it in the pointer too.
        let written = gone
            .iter()
            .map(|n| n.count_in(&serialized) + n.count_in(&unescape(pointer)))
            .collect();
        put(self.root(target), pointer, value);
        self.plants.push(Plant {
            target,
            pointer: pointer.to_owned(),
            gone: gone.to_vec(),
            keep,
            written,
        });
    }

    /// A value that must disappear (each needle is a secret part of it).
    pub fn secret(&mut self, target: Target, pointer: &str, value: Value, gone: &[Needle]) {
        assert!(!gone.is_empty(), "fixture bug: secret at {pointer} without needles");
        self.plant(target, pointer, value, gone, Keep::Nothing);
    }

    /// A value that must survive byte for byte.
    pub fn keep(&mut self, target: Target, pointer: &str, value: Value) {
        self.plant(target, pointer, value.clone(), &[], Keep::Exact(value));
    }

    /// A free-text string holding both secrets (must go) and look-alikes (must stay).
    pub fn mixed(&mut self, target: Target, pointer: &str, text: &str, gone: &[Needle], keep: &[&str]) {
        for k in keep {
            assert!(text.contains(k), "fixture bug: {k:?} is not part of {text:?}");
        }
        let keep = Keep::Contains(keep.iter().map(|s| s.to_string()).collect());
        self.plant(target, pointer, Value::String(text.to_owned()), gone, keep);
    }

    /// A value already present in the capture that must survive byte for byte.
    pub fn keep_existing(&mut self, target: Target, pointer: &str) {
        let value = self
            .root(target)
            .pointer(pointer)
            .cloned()
            .unwrap_or_else(|| panic!("fixture bug: {} has nothing at {target}{pointer}", self.name));
        self.plants.push(Plant {
            target,
            pointer: pointer.to_owned(),
            gone: vec![],
            keep: Keep::Exact(value),
            written: vec![],
        });
    }

    pub fn build(self) -> Case {
        let header = match self.header {
            Value::Object(map) => map,
            _ => panic!("fixture bug: envelope header of {} is not an object", self.name),
        };
        let mut envelope = Envelope::new(header);
        for (headers, body) in self.items {
            let payload = match body {
                Body::Json(v) => Bytes::from(serde_json::to_vec(&v).expect("values serialize")),
                Body::Text(s) => Bytes::from(s),
                Body::Raw(b) => b,
            };
            envelope.items.push(Item::from_parts(headers, payload));
        }
        let bytes = envelope.to_bytes();
        let case = Case {
            name: self.name,
            allow_drops: self.allow_drops,
            bytes,
            plants: self.plants,
        };
        self_check(&case);
        case
    }
}

fn as_map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("fixture bug: item headers must be an object"),
    }
}

fn unescape(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Sets `value` at a JSON pointer, creating missing objects on the way.
pub fn put(root: &mut Value, pointer: &str, value: Value) {
    assert!(
        pointer.starts_with('/'),
        "fixture bug: pointer {pointer:?} must start with /"
    );
    let segments: Vec<String> = pointer[1..].split('/').map(unescape).collect();
    let mut at = root;
    for (n, seg) in segments.iter().enumerate() {
        let last = n + 1 == segments.len();
        at = match at {
            Value::Object(map) => {
                if last {
                    map.insert(seg.clone(), value);
                    return;
                }
                map.entry(seg.clone()).or_insert_with(|| Value::Object(Map::new()))
            }
            Value::Array(list) => {
                let i: usize = seg
                    .parse()
                    .unwrap_or_else(|_| panic!("fixture bug: {seg:?} in {pointer} is no index"));
                if last {
                    if i == list.len() {
                        list.push(value);
                    } else {
                        list[i] = value;
                    }
                    return;
                }
                if i == list.len() {
                    list.push(Value::Object(Map::new()));
                }
                &mut list[i]
            }
            other => panic!("fixture bug: {pointer} passes through a non-container {other}"),
        };
    }
}

/// Every needle must be findable exactly as often as it was planted; otherwise the capture already contained it
/// and a "leak" could not be traced to its plant. Look-alikes must not contain any needle.
fn self_check(case: &Case) {
    let text = String::from_utf8_lossy(&case.bytes);
    for plant in &case.plants {
        for (needle, written) in plant.gone.iter().zip(&plant.written) {
            assert!(
                *written > 0,
                "fixture bug: {} {}: needle {:?} is not in the planted value",
                case.name,
                plant.id(),
                needle.text
            );
            let total: usize = case
                .plants
                .iter()
                .flat_map(|p| p.gone.iter().zip(&p.written))
                .filter(|(n, _)| n.text == needle.text)
                .map(|(_, w)| *w)
                .sum();
            let found = needle.count_in(&text);
            assert_eq!(
                found, total,
                "fixture bug: {}: needle {:?} occurs {found} times, planted {total}",
                case.name, needle.text
            );
        }
        let kept: Vec<String> = match &plant.keep {
            Keep::Nothing => vec![],
            Keep::Exact(v) => vec![v.to_string()],
            Keep::Contains(list) => list.clone(),
        };
        for k in kept {
            for other in case.plants.iter().flat_map(|p| &p.gone) {
                assert!(
                    !other.found_in(&k),
                    "fixture bug: {}: look-alike {k:?} contains needle {:?}",
                    case.name,
                    other.text
                );
            }
        }
    }
}
