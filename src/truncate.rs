//! Truncation of oversized LLM fields (`gen_ai.prompt`, tool input/output, agent prompts) to a character limit.
//!
//! Values are cut on a UTF-8 character boundary and end with a visible marker, counted inside the limit, so the
//! result is never longer than `max_chars` characters. Sentry's per-event size limit (about 1 MB) is the reason:
//! one 10,000-character prompt per span adds up quickly.

use std::collections::HashMap;

use crate::rules::{RulesError, Truncation};

/// Compiled truncation table: exact field names plus `*.suffix` patterns.
#[derive(Debug, Clone, Default)]
pub struct TruncationRules {
    exact: HashMap<String, (usize, String)>,
    suffixes: Vec<(String, usize, String)>,
    marker: String,
    /// The smallest `max_chars` of any rule (`usize::MAX` without rules; 0, deciding nothing, in `Default`): a value
    /// of at most this many bytes fits every limit, so most strings are decided without hashing their key.
    shortest: usize,
}

/// What [`TruncationRules::limit_for`] found: the limit and the configured name (a bounded metric label).
#[derive(Debug, Clone, Copy)]
pub struct Limit<'a> {
    pub max_chars: usize,
    pub label: &'a str,
}

impl TruncationRules {
    pub fn new(config: &Truncation) -> Result<TruncationRules, RulesError> {
        let mut rules = TruncationRules {
            marker: config.marker.clone(),
            ..TruncationRules::default()
        };
        let marker_chars = config.marker.chars().count();
        rules.shortest = config
            .fields
            .iter()
            .filter(|rule| !rule.names.is_empty())
            .map(|rule| rule.max_chars)
            .min()
            .unwrap_or(usize::MAX);
        for rule in &config.fields {
            if rule.max_chars <= marker_chars {
                return Err(RulesError::Invalid {
                    id: "truncation".into(),
                    message: format!("max_chars {} must be larger than the marker", rule.max_chars),
                });
            }
            for name in &rule.names {
                if let Some(suffix) = name.strip_prefix('*') {
                    if suffix.is_empty() || suffix.contains('*') {
                        return Err(RulesError::Invalid {
                            id: "truncation".into(),
                            message: format!("field pattern `{name}`: only a leading `*.` wildcard is supported"),
                        });
                    }
                    rules.suffixes.push((suffix.to_string(), rule.max_chars, name.clone()));
                } else {
                    rules.exact.insert(name.clone(), (rule.max_chars, name.clone()));
                }
            }
        }
        Ok(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }

    /// The limit for a field name, if one applies.
    pub fn limit_for(&self, key: &str) -> Option<Limit<'_>> {
        if let Some((max_chars, label)) = self.exact.get(key) {
            return Some(Limit {
                max_chars: *max_chars,
                label,
            });
        }
        self.suffixes
            .iter()
            .find(|(suffix, _, _)| key.len() > suffix.len() && key.ends_with(suffix.as_str()))
            .map(|(_, max_chars, label)| Limit {
                max_chars: *max_chars,
                label,
            })
    }

    /// Whether a value of `bytes` bytes fits every limit (byte length bounds character count from above).
    pub fn fits_all(&self, bytes: usize) -> bool {
        bytes <= self.shortest
    }

    pub fn marker(&self) -> &str {
        &self.marker
    }
}

/// Result of cutting a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub value: String,
    /// Characters in the original.
    pub original_chars: usize,
    /// Characters kept before the marker.
    pub kept_chars: usize,
}

/// Cuts `text` to at most `max_chars` characters including `marker`, or returns `None` if it already fits.
pub fn truncate(text: &str, max_chars: usize, marker: &str) -> Option<Cut> {
    // Fast path: byte length bounds character count from above.
    if text.len() <= max_chars {
        return None;
    }
    let original_chars = text.chars().count();
    if original_chars <= max_chars {
        return None;
    }
    let marker_chars = marker.chars().count();
    let kept_chars = max_chars.saturating_sub(marker_chars);
    let cut_at = text.char_indices().nth(kept_chars).map_or(text.len(), |(i, _)| i);
    let mut value = String::with_capacity(cut_at + marker.len());
    value.push_str(&text[..cut_at]);
    value.push_str(marker);
    Some(Cut {
        value,
        original_chars,
        kept_chars,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::TruncationRule;

    #[test]
    fn short_values_are_untouched() {
        assert_eq!(truncate("hello", 10, "..."), None);
        assert_eq!(
            truncate("ééééé", 5, "..."),
            None,
            "5 characters fit even though they are 10 bytes"
        );
    }

    #[test]
    fn cuts_on_char_boundary_with_marker_inside_limit() {
        let text = "é".repeat(3000);
        let cut = truncate(&text, 2000, "...[truncated]").expect("too long");
        assert_eq!(cut.value.chars().count(), 2000, "marker counted inside the limit");
        assert!(cut.value.ends_with("...[truncated]"));
        assert_eq!(cut.original_chars, 3000);
        assert_eq!(cut.kept_chars, 2000 - 14);
        let emoji = "🦀".repeat(10);
        let cut = truncate(&emoji, 5, "…").expect("too long");
        assert_eq!(cut.value, "🦀🦀🦀🦀…");
    }

    #[test]
    fn limits_by_exact_name_and_suffix() {
        let rules = TruncationRules::new(&Truncation {
            marker: "...".into(),
            fields: vec![
                TruncationRule {
                    names: vec!["gen_ai.prompt".into(), "*.agent.system_prompt".into()],
                    max_chars: 2000,
                },
                TruncationRule {
                    names: vec!["tool.arguments".into()],
                    max_chars: 1500,
                },
            ],
        })
        .unwrap();
        assert_eq!(rules.limit_for("gen_ai.prompt").map(|l| l.max_chars), Some(2000));
        assert_eq!(
            rules.limit_for("myapp.agent.system_prompt").map(|l| l.label),
            Some("*.agent.system_prompt")
        );
        assert_eq!(rules.limit_for("tool.arguments").map(|l| l.max_chars), Some(1500));
        assert!(rules.limit_for("gen_ai.prompt.extra").is_none());
        assert!(rules.limit_for(".agent.system_prompt").is_none());
    }
}
