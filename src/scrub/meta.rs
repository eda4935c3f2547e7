//! Sentry `_meta` remarks: `{"_meta": {"request": {"headers": {"Authorization": {"": {"rem": [...], "len": n}}}}}}`.
//!
//! Sentry's UI reads these to show which rule removed what. Entries mirror the path of the changed field (array
//! indices as string keys) and are merged into whatever `_meta` the SDK already sent.

use serde_json::{Map, Value};

use super::MetaEntry;

/// Merges remarks into the root object's `_meta`, creating it if needed. Takes the entries by value so rule ids move
/// into the tree instead of being copied (PII-dense payloads have one entry per changed string).
pub fn merge_meta(root: &mut Map<String, Value>, entries: Vec<MetaEntry>) {
    if entries.is_empty() {
        return;
    }
    let meta = root.entry("_meta").or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        // An SDK sent something that is not `_meta`; ours replaces it rather than being lost.
        *meta = Value::Object(Map::new());
    }
    for entry in entries {
        let mut node = &mut *meta;
        for segment in &entry.path {
            node = descend(node, segment);
        }
        let Value::Object(map) = node else { continue };
        let leaf = map.entry(String::new()).or_insert_with(|| Value::Object(Map::new()));
        if !leaf.is_object() {
            *leaf = Value::Object(Map::new());
        }
        let Value::Object(leaf) = leaf else { continue };
        if !entry.remarks.is_empty() {
            if !matches!(leaf.get("rem"), Some(Value::Array(_))) {
                leaf.insert("rem".into(), Value::Array(Vec::new()));
            }
            if let Some(Value::Array(rem)) = leaf.get_mut("rem") {
                rem.reserve(entry.remarks.len());
                for remark in entry.remarks {
                    let mut item = Vec::with_capacity(if remark.range.is_some() { 4 } else { 2 });
                    item.push(Value::String(remark.rule));
                    item.push(Value::from(remark.ty));
                    if let Some((start, end)) = remark.range {
                        item.push(Value::from(start));
                        item.push(Value::from(end));
                    }
                    rem.push(Value::Array(item));
                }
            }
        }
        if let Some(len) = entry.len
            && !leaf.contains_key("len")
        {
            leaf.insert("len".into(), Value::from(len));
        }
    }
}

/// The object under `segment`, created (or made an object) if needed.
fn descend<'a>(node: &'a mut Value, segment: &str) -> &'a mut Value {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => {
            // Look up before inserting: most segments already exist, and `entry` would clone the key every time.
            if !matches!(map.get(segment), Some(Value::Object(_))) {
                map.insert(segment.to_string(), Value::Object(Map::new()));
            }
            match map.get_mut(segment) {
                Some(child) => child,
                // Inserted just above.
                None => unreachable!("segment was inserted"),
            }
        }
        // Made an object just above.
        other => other,
    }
}
