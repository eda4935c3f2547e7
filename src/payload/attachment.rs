//! `attachment` items: the file name gets the value detectors; JSON attachments (view hierarchies, `.json` files)
//! are walked like data, minidumps are scrubbed in place ([`super::minidump`]), other UTF-8 text (logs, Apple crash reports) gets the value detectors, and binary content
//! follows the rules' policy.

use serde_json::Value;

use super::{Ctx, json, text};
use crate::envelope::Item;
use crate::scrub::stream::DropCheck;
use crate::scrub::{Scope, Seg, TextMode};

/// Scrubs one attachment, or applies the binary policy.
pub fn process(mut item: Item, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    // File names are chosen by apps (`invoice-jane.doe@example.com.pdf`): detectors only, no key rules.
    if let Some(Value::String(name)) = item.headers_mut().get_mut("filename") {
        cx.scrubber.scrub_text(name, TextMode::Source, &[Seg::Key("filename")]);
    }
    if item.headers().get("attachment_type").and_then(Value::as_str) == Some("event.minidump") {
        return super::minidump::process(item, cx);
    }
    let json_like = item.content_type().is_some_and(|c| c.contains("json"))
        || item.filename().is_some_and(|f| f.ends_with(".json"));
    if json_like {
        cx.scrubber.collect_meta = false;
        // Not JSON after all is scrubbed as text below.
        if cx.stream && json::streamed(&mut item, Scope::Data, DropCheck::None, cx) {
            return Some(item);
        }
        if let Some(value) = super::json::parse_tree(item.payload()) {
            return json::walk_and_store(item, value, Scope::Data, cx.scrubber);
        }
    }
    text::process(item, cx)
}
