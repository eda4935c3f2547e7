//! `rules.yaml`: the serde model users write ([`RulesFile`]) and the compiled form the hot path reads
//! ([`CompiledRules`]).
//!
//! The model is strict (`deny_unknown_fields` everywhere, so a typo is an error with a line number instead of a
//! silently ignored rule). [`CompiledRules::from_yaml`] parses, validates and compiles every regex once; nothing in
//! this module runs per event. Every field is documented in the shipped `rules.yaml`.

mod compiled;
pub mod detectors;
pub mod keys;

pub use compiled::{CompiledRules, Engine, Policy};

use std::collections::BTreeMap;

use serde::Deserialize;

/// The rules shipped with the relay, used when no `--rules` file is given.
pub const DEFAULT_RULES_YAML: &str = include_str!("../../rules.yaml");

/// Why a rules file could not be loaded. Messages name the place (line and column, rule id), never a secret.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid rules file at line {line}, column {column}: {message}")]
    Yaml { line: u64, column: u64, message: String },
    #[error("invalid rules file: {message}")]
    YamlNoLocation { message: String },
    #[error("rule `{id}`: invalid regex: {message}")]
    BadRegex { id: String, message: String },
    #[error("rule `{id}`: {message}")]
    Invalid { id: String, message: String },
    #[error(
        "rules use `action: hash` but the environment variable `{var}` named by `hashing.key_env` is missing or empty"
    )]
    MissingHashKey { var: String },
}

/// The whole `rules.yaml` file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RulesFile {
    /// Format version of the file; only 1 exists.
    pub version: u32,
    /// Forward everything unchanged and only count what would have been scrubbed.
    pub dry_run: bool,
    /// What an SDK with `send_default_pii` would have sent. `false`: remove IPs, cookies and forwarding headers.
    pub send_default_pii: bool,
    /// Attribute and data keys holding the end user's IP; removed when `send_default_pii` is false.
    pub ip_address_keys: Vec<String>,
    /// Texts written in place of scrubbed values.
    pub replacements: Replacements,
    /// HMAC-SHA256 settings for rules with `action: hash`.
    pub hashing: Hashing,
    pub sensitive_keys: SensitiveKeys,
    pub sensitive_headers: SensitiveHeaders,
    pub detectors: Detectors,
    /// User-defined regex rules, applied to every string like the detectors.
    pub custom_rules: Vec<CustomRule>,
    pub truncation: Truncation,
    pub drop: DropRules,
    /// Per-project additions, keyed by Sentry project id.
    pub projects: BTreeMap<u64, ProjectOverride>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Replacements {
    /// Written in place of values under sensitive keys and headers.
    pub key: String,
    /// Default text for value detectors that do not set their own `replacement`.
    pub value: String,
}

impl Default for Replacements {
    fn default() -> Self {
        Replacements {
            key: "[FILTERED]".into(),
            value: "[redacted]".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Hashing {
    /// Name of the environment variable holding the HMAC key. Required when any rule uses `action: hash`.
    pub key_env: Option<String>,
}

/// What a rule does with what it matched.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Write the replacement text.
    #[default]
    Replace,
    /// Write an HMAC-SHA256 of the value (keyed from `hashing.key_env`), so equal values stay correlatable.
    Hash,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SensitiveKeys {
    pub action: Action,
    /// Key words; a JSON key matches when its words contain these words in sequence.
    pub words: Vec<String>,
    /// Keys that match only as a whole key (`account` matches `account`, not `account_id`).
    pub exact: Vec<String>,
    /// Keys that never match, compared whole (after the same normalization).
    pub safe: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SensitiveHeaders {
    /// Exact header names, case-insensitive; `_` and `-` are equivalent.
    pub names: Vec<String>,
    /// Glob patterns over header names; `*` matches any run of characters.
    pub patterns: Vec<String>,
    /// Headers carrying the client IP; removed when `send_default_pii` is false.
    pub ip_headers: Vec<String>,
}

/// One built-in value detector's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectorConfig {
    pub enabled: bool,
    /// Replacement text; `None` means `replacements.value` (email: `***@{domain}`).
    pub replacement: Option<String>,
    pub action: Action,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            enabled: true,
            replacement: None,
            action: Action::Replace,
        }
    }
}

/// `phone_intl`: a detector's settings plus the region national numbers are read in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhoneConfig {
    pub enabled: bool,
    pub replacement: Option<String>,
    pub action: Action,
    /// CLDR region id (`US`, `GB`, `DE`, ...). `US`: only numbers with a `+` country code (NANP is `phone_us`'s);
    /// another region: its national format too.
    pub region: String,
}

impl Default for PhoneConfig {
    fn default() -> Self {
        PhoneConfig {
            enabled: true,
            replacement: None,
            action: Action::Replace,
            region: "US".into(),
        }
    }
}

impl PhoneConfig {
    /// The settings every detector has.
    pub fn common(&self) -> DetectorConfig {
        DetectorConfig {
            enabled: self.enabled,
            replacement: self.replacement.clone(),
            action: self.action,
        }
    }
}

/// The built-in detectors, by name. Omitted ones keep their defaults (enabled).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Detectors {
    pub email: DetectorConfig,
    pub phone_us: DetectorConfig,
    pub ssn: DetectorConfig,
    pub credit_card: DetectorConfig,
    pub bearer_token: DetectorConfig,
    pub url_credentials: DetectorConfig,
    pub private_key: DetectorConfig,
    pub jwt: DetectorConfig,
    pub aws_access_key: DetectorConfig,
    pub api_token: DetectorConfig,
    pub credential_in_text: DetectorConfig,
    pub user_path: DetectorConfig,
    pub provider_secret: DetectorConfig,
    pub labelled_tax_id: DetectorConfig,
    pub itin: DetectorConfig,
    pub phone_intl: PhoneConfig,
    pub ipv6: DetectorConfig,
    pub iban: DetectorConfig,
    pub ipv4: DetectorConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// Rule id: used in metrics, `_meta` remarks and `--explain` output. Letters, digits, `_`, `-`, `.`.
    pub id: String,
    /// A Rust `regex` pattern. The whole match is replaced.
    pub pattern: String,
    #[serde(default)]
    pub replacement: Option<String>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub action: Action,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Truncation {
    /// Appended to a cut value (counted inside the limit).
    pub marker: String,
    pub fields: Vec<TruncationRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TruncationRule {
    /// Field names; `*.x` matches any key ending in `.x`.
    pub names: Vec<String>,
    /// Maximum length in characters (Unicode scalar values), marker included.
    pub max_chars: usize,
}

/// What to do with content that cannot be scrubbed.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BinaryPolicy {
    /// Remove the item (the safe default: unscrubbed bytes never leave).
    #[default]
    Drop,
    /// Forward the bytes unchanged.
    Forward,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnparseablePolicy {
    /// Remove the item.
    #[default]
    Drop,
    /// Apply the value detectors to the raw text and forward it (key rules cannot apply).
    ScrubAsText,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropRules {
    /// Routes whose transactions (and segment spans with their children) are dropped. Exact paths (a trailing `/`
    /// is optional), or prefixes ending in `*`.
    pub routes: Vec<String>,
    /// Binary attachments, replay recordings and other non-text payloads.
    pub binary_items: BinaryPolicy,
    /// JSON items that fail to parse.
    pub unparseable_json: UnparseablePolicy,
    /// `replay_video` items: the event and recording are scrubbed, the mp4 cannot be. `forward` (default, since
    /// SDKs mask the screen on the device) keeps the replay; `drop` removes the whole replay.
    pub replay_video: BinaryPolicy,
    /// Pass-or-drop for binary (not UTF-8) attachments by `attachment_type` and content type. First match wins;
    /// no match follows `binary_items`.
    pub attachments: Vec<AttachmentRule>,
}

impl Default for DropRules {
    fn default() -> Self {
        DropRules {
            routes: Vec::new(),
            binary_items: BinaryPolicy::Drop,
            unparseable_json: UnparseablePolicy::Drop,
            replay_video: BinaryPolicy::Forward,
            attachments: Vec::new(),
        }
    }
}

/// One attachment policy entry: matches when every selector given matches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentRule {
    /// The item's `attachment_type` (`event.attachment` when absent), compared exactly.
    #[serde(default)]
    pub attachment_type: Option<String>,
    /// The item's `content_type`: exact (`image/png`) or a prefix ending in `*` (`image/*`), case-insensitive,
    /// parameters (`; charset=...`) ignored.
    #[serde(default)]
    pub content_type: Option<String>,
    pub action: BinaryPolicy,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectOverride {
    /// Extra sensitive key words for this project.
    pub sensitive_keys: Vec<String>,
    /// Extra safe keys for this project.
    pub safe_keys: Vec<String>,
    /// Detector names (or custom rule ids) switched off for this project.
    pub disabled_detectors: Vec<String>,
    /// Extra drop routes for this project.
    pub drop_routes: Vec<String>,
}

impl RulesFile {
    /// Parses YAML text into the model, with line and column on every error.
    pub fn from_yaml(text: &str) -> Result<RulesFile, RulesError> {
        serde_saphyr::from_str::<RulesFile>(text).map_err(|err| {
            // Only the first line of the message: later lines are a rendered snippet of the file.
            let message = err.to_string().lines().next().unwrap_or("invalid YAML").to_string();
            match err.location() {
                Some(loc) if loc.line() > 0 => RulesError::Yaml {
                    line: loc.line(),
                    column: loc.column(),
                    message,
                },
                _ => RulesError::YamlNoLocation { message },
            }
        })
    }
}
