//! Text payloads: valid UTF-8 gets the value detectors (key rules need structure, so they cannot apply); anything
//! else is binary and follows the rules' `binary_items` policy, never forwarded raw unless the operator said so.

use bytes::Bytes;

use super::Ctx;
use crate::envelope::Item;
use crate::pipeline::DropReason;
use crate::rules::BinaryPolicy;
use crate::scrub::{Scrubber, TextMode};

/// Scrubs a text item, or applies the binary policy when it is not UTF-8.
pub fn process(mut item: Item, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    match scrub_utf8(&mut item, cx.scrubber) {
        Ok(()) => Some(item),
        Err(_) => binary(item, cx, cx.scrubber.engine.policy.binary_items),
    }
}

/// Applies a pass-or-drop decision to content that cannot be scrubbed.
pub(crate) fn binary(item: Item, cx: &mut Ctx<'_, '_>, policy: BinaryPolicy) -> Option<Item> {
    match policy {
        BinaryPolicy::Forward => Some(item),
        BinaryPolicy::Drop => {
            cx.report.dropped.push((item.ty(), DropReason::BinaryAttachment));
            None
        }
    }
}

/// Applies the value detectors to a payload that is valid UTF-8 text; `Err` (payload untouched) when it is not.
pub(crate) fn scrub_utf8(item: &mut Item, scrubber: &mut Scrubber<'_>) -> Result<(), std::str::Utf8Error> {
    let mut text = std::str::from_utf8(item.payload())?.to_string();
    if scrubber.scrub_text(&mut text, TextMode::Plain, &Vec::new()) {
        item.set_payload(Bytes::from(text));
    }
    Ok(())
}
