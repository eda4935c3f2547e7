//! `attachment` items: the file name gets the value detectors; JSON attachments (view hierarchies, `.json` files)
//! are walked like data, minidumps are scrubbed in place ([`super::minidump`]), other UTF-8 text (logs, Apple crash
//! reports) gets the value detectors, and binary content (images, video, opaque files) is passed or dropped by the
//! rules' attachment policy (`drop.attachments`, by `attachment_type` and content type, falling back to
//! `binary_items`). Every outcome is counted.

use serde_json::Value;

use super::{Ctx, Format, Outcome, json, text};
use crate::envelope::Item;
use crate::rules::BinaryPolicy;
use crate::scrub::stream::DropCheck;
use crate::scrub::{Scope, Seg, TextMode};

/// Scrubs one attachment, or applies the attachment policy to binary content.
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
            cx.report.count(Format::Attachment, Outcome::Scrubbed);
            return Some(item);
        }
        if let Some(value) = super::json::parse_tree(item.payload()) {
            cx.report.count(Format::Attachment, Outcome::Scrubbed);
            return json::walk_and_store(item, value, Scope::Data, cx.scrubber);
        }
    }
    if text::scrub_utf8(&mut item, cx.scrubber).is_ok() {
        cx.report.count(Format::Attachment, Outcome::Scrubbed);
        return Some(item);
    }
    let attachment_type = item.headers().get("attachment_type").and_then(Value::as_str);
    let policy = cx
        .scrubber
        .engine
        .policy
        .attachment(attachment_type, item.content_type());
    let outcome = match policy {
        BinaryPolicy::Forward => Outcome::ForwardedUnscrubbed,
        BinaryPolicy::Drop => Outcome::DroppedPolicy,
    };
    cx.report.count(Format::Attachment, outcome);
    text::binary(item, cx, policy)
}
