//! Browser reports (`raw_security` CSP reports, `nel` network errors): one JSON object each, scrubbed by
//! `scrub::security` (URLs keep their origin and lose tokens, policies their nonces; directives stay). A report that
//! is not a JSON object follows the rules' `unparseable_json` policy.

use bytes::Bytes;
use serde_json::Value;

use super::Ctx;
use crate::envelope::{Item, ItemType};

pub fn process(mut item: Item, ty: ItemType, cx: &mut Ctx<'_, '_>) -> Option<Item> {
    let Some(Value::Object(mut report)) = super::json::parse_tree(item.payload()) else {
        return super::json::unparseable(item, ty, cx);
    };
    cx.scrubber.security_report(&mut report);
    if cx.scrubber.changed {
        // Serializing a `Value` built from parsed JSON cannot fail.
        item.set_payload(Bytes::from(serde_json::to_vec(&report).unwrap_or_default()));
    }
    Some(item)
}
