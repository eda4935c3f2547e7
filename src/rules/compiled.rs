//! The compiled form of `rules.yaml`: key automata, header sets, detector list, truncation and route tables, built
//! once at start or reload and shared read-only (`Send + Sync`) by every request.
//!
//! Per-project overrides are compiled into their own complete [`Engine`], so the hot path never merges rules.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::detectors::{Detector, DetectorSet, Kind, phone};
use super::keys::{HeaderMatcher, KeyMatcher, header_name_eq, normalize_header};
use super::{
    Action, AttachmentRule, BinaryPolicy, DEFAULT_RULES_YAML, DetectorConfig, ProjectOverride, RulesError, RulesFile,
    UnparseablePolicy,
};
use crate::filter::RouteMatcher;
use crate::truncate::TruncationRules;

/// Numbers every compiled engine, so per-thread caches of rule verdicts never outlive the rules they came from.
static NEXT_ENGINE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Everything one project's traffic is scrubbed with.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Unique per compilation (a reload gets new ids; a clone keeps the id, as it keeps the rules).
    pub id: u64,
    pub keys: KeyMatcher,
    pub headers: HeaderMatcher,
    /// Normalized header names carrying the client IP (`x-forwarded-for`, ...). A handful: a list beats hashing.
    pub ip_headers: Vec<String>,
    /// Attribute/data keys holding the end user's IP, matched exactly.
    pub ip_keys: Vec<String>,
    pub send_default_pii: bool,
    pub key_action: Action,
    pub key_replacement: String,
    pub detectors: DetectorSet,
    pub truncation: TruncationRules,
    pub routes: RouteMatcher,
    pub policy: Policy,
    /// HMAC key for `action: hash`; present only when some rule hashes.
    pub hmac_key: Option<Arc<[u8]>>,
}

/// What to do with content the engine cannot scrub.
#[derive(Debug, Clone)]
pub struct Policy {
    pub binary_items: BinaryPolicy,
    pub unparseable_json: UnparseablePolicy,
    pub replay_video: BinaryPolicy,
    /// `drop.attachments`, validated, content types lowercased.
    pub attachments: Vec<AttachmentRule>,
}

impl Policy {
    /// The policy for a binary attachment: the first `drop.attachments` entry that matches, else `binary_items`.
    pub fn attachment(&self, attachment_type: Option<&str>, content_type: Option<&str>) -> BinaryPolicy {
        let attachment_type = attachment_type.unwrap_or("event.attachment");
        // `image/PNG; name=x` is `image/png`.
        let content_type = content_type
            .map(|c| c.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
            .unwrap_or_default();
        self.attachments
            .iter()
            .find(|rule| {
                rule.attachment_type.as_deref().is_none_or(|t| t == attachment_type)
                    && rule
                        .content_type
                        .as_deref()
                        .is_none_or(|pattern| match pattern.strip_suffix('*') {
                            Some(prefix) => content_type.starts_with(prefix),
                            None => content_type == pattern,
                        })
            })
            .map_or(self.binary_items, |rule| rule.action)
    }
}

/// Checks and normalizes `drop.attachments`: each entry selects something, and `*` only ends a content type.
fn attachment_rules(rules: &[AttachmentRule]) -> Result<Vec<AttachmentRule>, RulesError> {
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let invalid = |message: &str| RulesError::Invalid {
                id: format!("drop.attachments[{i}]"),
                message: message.into(),
            };
            if rule.attachment_type.is_none() && rule.content_type.is_none() {
                return Err(invalid("needs `attachment_type`, `content_type`, or both"));
            }
            let content_type = rule.content_type.as_deref().map(str::to_ascii_lowercase);
            if let Some(pattern) = &content_type
                && (pattern.is_empty() || pattern.trim_end_matches('*').contains('*') || pattern.contains(';'))
            {
                return Err(invalid(
                    "`content_type` is a type (`image/png`) or a prefix ending in `*` (`image/*`)",
                ));
            }
            Ok(AttachmentRule {
                content_type,
                ..rule.clone()
            })
        })
        .collect()
}

/// The compiled rules file: a base engine plus one engine per project override.
#[derive(Debug, Clone)]
pub struct CompiledRules {
    dry_run: bool,
    base: Engine,
    projects: HashMap<u64, Engine>,
}

impl CompiledRules {
    /// Parses, validates and compiles a rules file.
    pub fn from_yaml(text: &str) -> Result<CompiledRules, RulesError> {
        let file = RulesFile::from_yaml(text)?;
        CompiledRules::compile(&file)
    }

    /// Reads and compiles a rules file.
    pub fn load(path: &Path) -> Result<CompiledRules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.display().to_string(),
            source,
        })?;
        CompiledRules::from_yaml(&text)
    }

    /// The shipped `rules.yaml`.
    pub fn defaults() -> CompiledRules {
        // The shipped file is compiled by a unit test, so this cannot fail in a released build. It cannot use
        // `action: hash` (which needs an environment variable) for the same reason.
        CompiledRules::from_yaml(DEFAULT_RULES_YAML).expect("the shipped rules.yaml compiles (unit-tested)")
    }

    /// Compiles an already-parsed model.
    pub fn compile(file: &RulesFile) -> Result<CompiledRules, RulesError> {
        if file.version > 1 {
            return Err(RulesError::Invalid {
                id: "version".into(),
                message: format!("unsupported version {} (this relay reads version 1)", file.version),
            });
        }
        let hmac_key = hmac_key(file)?;
        let base = Engine::build(file, None, hmac_key.clone())?;
        let mut projects = HashMap::new();
        for (id, project) in &file.projects {
            projects.insert(*id, Engine::build(file, Some(project), hmac_key.clone())?);
        }
        Ok(CompiledRules {
            dry_run: file.dry_run,
            base,
            projects,
        })
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The engine for a project: its override if it has one, the base rules otherwise.
    pub fn engine(&self, project_id: Option<u64>) -> &Engine {
        project_id.and_then(|id| self.projects.get(&id)).unwrap_or(&self.base)
    }

    /// Rule ids this rule set can report (for pre-registering metric labels).
    pub fn rule_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = ["sensitive_key", "sensitive_header", "send_default_pii", "url_token"]
            .map(String::from)
            .into();
        for engine in std::iter::once(&self.base).chain(self.projects.values()) {
            for d in &engine.detectors.detectors {
                if !ids.contains(&d.id) {
                    ids.push(d.id.clone());
                }
            }
        }
        ids
    }
}

fn uses_hash(file: &RulesFile) -> bool {
    let d = &file.detectors;
    file.sensitive_keys.action == Action::Hash
        || [
            &d.email,
            &d.phone_us,
            &d.ssn,
            &d.credit_card,
            &d.bearer_token,
            &d.url_credentials,
            &d.private_key,
            &d.jwt,
            &d.aws_access_key,
            &d.api_token,
            &d.credential_in_text,
            &d.user_path,
            &d.iban,
            &d.ipv4,
            &d.provider_secret,
            &d.labelled_tax_id,
            &d.itin,
            &d.phone_intl.common(),
            &d.ipv6,
        ]
        .iter()
        .any(|c| c.enabled && c.action == Action::Hash)
        || file.custom_rules.iter().any(|r| r.enabled && r.action == Action::Hash)
}

fn hmac_key(file: &RulesFile) -> Result<Option<Arc<[u8]>>, RulesError> {
    if !uses_hash(file) {
        return Ok(None);
    }
    let var = file.hashing.key_env.clone().unwrap_or_default();
    if var.is_empty() {
        return Err(RulesError::MissingHashKey {
            var: "(hashing.key_env is not set)".into(),
        });
    }
    match std::env::var(&var) {
        Ok(value) if !value.is_empty() => Ok(Some(Arc::from(value.into_bytes()))),
        _ => Err(RulesError::MissingHashKey { var }),
    }
}

fn valid_rule_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

impl Engine {
    /// Whether a header name carries the client IP.
    pub fn is_ip_header(&self, name: &str) -> bool {
        // Trimmed once here rather than by each comparison (every header name and data key is asked).
        let name = name.trim();
        self.ip_headers
            .iter()
            .any(|h| h.len() == name.len() && header_name_eq(h, name))
    }

    /// Whether an attribute or data key holds the end user's IP.
    pub fn is_ip_key(&self, key: &str) -> bool {
        self.ip_keys.iter().any(|k| k == key)
    }

    fn build(
        file: &RulesFile,
        project: Option<&ProjectOverride>,
        hmac_key: Option<Arc<[u8]>>,
    ) -> Result<Engine, RulesError> {
        let empty = ProjectOverride::default();
        let project = project.unwrap_or(&empty);

        let words = file
            .sensitive_keys
            .words
            .iter()
            .chain(&project.sensitive_keys)
            .map(String::as_str);
        let safe = file
            .sensitive_keys
            .safe
            .iter()
            .chain(&project.safe_keys)
            .map(String::as_str);
        let keys = KeyMatcher::new(words, safe).with_exact(file.sensitive_keys.exact.iter().map(String::as_str));
        let headers = HeaderMatcher::new(
            file.sensitive_headers.names.iter().map(String::as_str),
            file.sensitive_headers.patterns.iter().map(String::as_str),
        );
        let ip_headers = file
            .sensitive_headers
            .ip_headers
            .iter()
            .map(|h| normalize_header(h))
            .collect();
        let ip_keys = file.ip_address_keys.clone();

        let disabled: HashSet<&str> = project.disabled_detectors.iter().map(String::as_str).collect();
        let known: HashSet<&str> = Kind::BUILT_IN.iter().map(|k| k.id()).collect();
        for name in &disabled {
            if !known.contains(name) && !file.custom_rules.iter().any(|r| r.id == *name) {
                return Err(RulesError::Invalid {
                    id: (*name).to_string(),
                    message: "listed in `disabled_detectors` but no detector or custom rule has this id".into(),
                });
            }
        }

        let mut detectors = Vec::new();
        let d = &file.detectors;
        let phone_intl = d.phone_intl.common();
        let configs: [(Kind, &DetectorConfig); 19] = [
            (Kind::PrivateKey, &d.private_key),
            (Kind::UrlCredentials, &d.url_credentials),
            (Kind::BearerToken, &d.bearer_token),
            (Kind::Jwt, &d.jwt),
            (Kind::AwsAccessKey, &d.aws_access_key),
            (Kind::ProviderSecret, &d.provider_secret),
            (Kind::ApiToken, &d.api_token),
            (Kind::CredentialInText, &d.credential_in_text),
            (Kind::UserPath, &d.user_path),
            (Kind::Email, &d.email),
            (Kind::CreditCard, &d.credit_card),
            (Kind::Iban, &d.iban),
            (Kind::Itin, &d.itin),
            (Kind::Ssn, &d.ssn),
            // After `ssn` and `itin`: a dashed number after a label keeps the shape detector's rule id.
            (Kind::LabelledTaxId, &d.labelled_tax_id),
            (Kind::PhoneUs, &d.phone_us),
            (Kind::PhoneIntl, &phone_intl),
            (Kind::Ipv6, &d.ipv6),
            (Kind::Ipv4, &d.ipv4),
        ];
        let phone_region = phone::parse_region(&d.phone_intl.region).ok_or_else(|| RulesError::Invalid {
            id: "detectors.phone_intl.region".into(),
            message: format!(
                "`{}` is not a region id (two letters, like US, GB, DE)",
                d.phone_intl.region
            ),
        })?;
        for (kind, config) in configs {
            if !config.enabled || disabled.contains(kind.id()) {
                continue;
            }
            let default_replacement = match kind {
                Kind::Email => "***",
                // Sentry's `@userpath` writes `[user]`: the path still reads as a path.
                Kind::UserPath => "[user]",
                _ => file.replacements.value.as_str(),
            };
            detectors.push(Detector {
                kind,
                id: kind.id().to_string(),
                replacement: config
                    .replacement
                    .clone()
                    .unwrap_or_else(|| default_replacement.to_string()),
                action: config.action,
                regex: None,
            });
        }
        let mut seen_ids: HashSet<&str> = known.clone();
        seen_ids.extend(["sensitive_key", "sensitive_header", "send_default_pii"]);
        for rule in &file.custom_rules {
            if !valid_rule_id(&rule.id) {
                return Err(RulesError::Invalid {
                    id: rule.id.clone(),
                    message: "custom rule ids must be 1-64 characters of letters, digits, `_`, `-`, `.`".into(),
                });
            }
            if !seen_ids.insert(rule.id.as_str()) {
                return Err(RulesError::Invalid {
                    id: rule.id.clone(),
                    message: "duplicate rule id (or the id of a built-in rule)".into(),
                });
            }
            // Compile even disabled rules, so a typo is caught before it is switched on.
            let regex = regex::RegexBuilder::new(&rule.pattern)
                .size_limit(1 << 22)
                .build()
                .map_err(|e| RulesError::BadRegex {
                    id: rule.id.clone(),
                    message: first_line(&e.to_string()),
                })?;
            if !rule.enabled || disabled.contains(rule.id.as_str()) {
                continue;
            }
            detectors.push(Detector {
                kind: Kind::Custom,
                id: rule.id.clone(),
                replacement: rule
                    .replacement
                    .clone()
                    .unwrap_or_else(|| file.replacements.value.clone()),
                action: rule.action,
                regex: Some(regex),
            });
        }

        let truncation = TruncationRules::new(&file.truncation)?;
        let routes = RouteMatcher::new(file.drop.routes.iter().chain(&project.drop_routes).map(String::as_str))
            .map_err(|message| RulesError::Invalid {
                id: "drop.routes".into(),
                message,
            })?;

        Ok(Engine {
            id: NEXT_ENGINE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            keys,
            headers,
            ip_headers,
            ip_keys,
            send_default_pii: file.send_default_pii,
            key_action: file.sensitive_keys.action,
            key_replacement: file.replacements.key.clone(),
            detectors: DetectorSet::new(detectors).with_phone_region(phone_region),
            truncation,
            routes,
            policy: Policy {
                binary_items: file.drop.binary_items,
                unparseable_json: file.drop.unparseable_json,
                replay_video: file.drop.replay_video,
                attachments: attachment_rules(&file.drop.attachments)?,
            },
            hmac_key,
        })
    }
}

fn first_line(message: &str) -> String {
    // regex errors render the pattern with a caret on later lines; the last line holds the reason.
    let lines: Vec<&str> = message.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.last().map(|l| l.trim().to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_rules_compile() {
        let rules = CompiledRules::from_yaml(DEFAULT_RULES_YAML).expect("rules.yaml compiles");
        assert!(!rules.dry_run(), "the shipped rules scrub for real");
        let engine = rules.engine(None);
        assert!(engine.keys.is_sensitive("password"));
        assert!(!engine.send_default_pii);
        assert!(engine.detectors.detectors.iter().any(|d| d.id == "email"));
    }

    #[test]
    fn unknown_key_reports_line() {
        let err = CompiledRules::from_yaml("version: 1\ndry_run: false\nsensitive_keyz:\n  words: [a]\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 3"), "unknown key error names its line: {text}");
        assert!(
            text.contains("sensitive_keyz"),
            "unknown key error names the key: {text}"
        );
    }

    #[test]
    fn nested_unknown_key_reports_line() {
        let yaml = "detectors:\n  email:\n    enabled: true\n    replacment: x\n";
        let text = CompiledRules::from_yaml(yaml).unwrap_err().to_string();
        assert!(
            text.contains("line 4"),
            "nested unknown key error names its line: {text}"
        );
    }

    #[test]
    fn bad_type_reports_line() {
        let yaml = "version: 1\ndry_run: maybe\n";
        let text = CompiledRules::from_yaml(yaml).unwrap_err().to_string();
        assert!(text.contains("line 2"), "bad type error names its line: {text}");
    }

    #[test]
    fn bad_regex_names_rule() {
        let yaml = "custom_rules:\n  - id: order_ids\n    pattern: 'ORD-(\\d+'\n";
        let err = CompiledRules::from_yaml(yaml).unwrap_err();
        assert!(matches!(err, RulesError::BadRegex { .. }), "{err:?}");
        assert!(
            err.to_string().contains("order_ids"),
            "bad regex error names the rule: {err}"
        );
    }

    #[test]
    fn hash_without_key_env_fails() {
        let yaml = "hashing:\n  key_env: SCRUB_RELAY_TEST_SURELY_UNSET_VAR\nsensitive_keys:\n  action: hash\n  words: [password]\n";
        let err = CompiledRules::from_yaml(yaml).unwrap_err();
        assert!(matches!(err, RulesError::MissingHashKey { .. }), "{err:?}");
        assert!(err.to_string().contains("SCRUB_RELAY_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn duplicate_and_unknown_ids_fail() {
        let yaml = "custom_rules:\n  - id: email\n    pattern: x\n";
        assert!(
            CompiledRules::from_yaml(yaml).is_err(),
            "custom rule cannot reuse a built-in id"
        );
        let yaml = "projects:\n  42:\n    disabled_detectors: [nope]\n";
        assert!(
            CompiledRules::from_yaml(yaml).is_err(),
            "disabling an unknown detector is a typo"
        );
    }

    #[test]
    fn phone_region_is_validated_before_use() {
        let err = CompiledRules::from_yaml("detectors:\n  phone_intl:\n    region: XX\n").unwrap_err();
        assert!(err.to_string().contains("detectors.phone_intl.region"), "{err}");
        assert!(CompiledRules::from_yaml("detectors:\n  phone_intl:\n    region: gb\n").is_ok());
    }

    #[test]
    fn every_breadth_detector_can_be_switched_off() {
        let yaml = "detectors:\n  user_path: {enabled: false}\n  ipv6: {enabled: false}\n  itin: {enabled: false}\n  \
                    labelled_tax_id: {enabled: false}\n  provider_secret: {enabled: false}\n  phone_intl: {enabled: false}\n";
        let rules = CompiledRules::from_yaml(yaml).unwrap();
        let ids: Vec<&str> = rules
            .engine(None)
            .detectors
            .detectors
            .iter()
            .map(|d| d.id.as_str())
            .collect();
        for off in [
            "user_path",
            "ipv6",
            "itin",
            "labelled_tax_id",
            "provider_secret",
            "phone_intl",
        ] {
            assert!(!ids.contains(&off), "{off} still on: {ids:?}");
        }
        let yaml = "detectors:\n  ipv6: {replacement: '[ip]'}\nprojects:\n  7:\n    disabled_detectors: [user_path]\n";
        let rules = CompiledRules::from_yaml(yaml).unwrap();
        let ipv6 = rules
            .engine(None)
            .detectors
            .detectors
            .iter()
            .find(|d| d.id == "ipv6")
            .unwrap();
        assert_eq!(ipv6.replacement, "[ip]");
        assert!(
            !rules
                .engine(Some(7))
                .detectors
                .detectors
                .iter()
                .any(|d| d.id == "user_path")
        );
    }

    #[test]
    fn project_override_is_separate() {
        let yaml = "sensitive_keys:\n  words: [password]\nprojects:\n  42:\n    sensitive_keys: [tenant]\n    disabled_detectors: [email]\n";
        let rules = CompiledRules::from_yaml(yaml).unwrap();
        assert!(!rules.engine(None).keys.is_sensitive("tenant"));
        assert!(rules.engine(Some(42)).keys.is_sensitive("tenant"));
        assert!(rules.engine(Some(42)).keys.is_sensitive("password"));
        assert!(
            rules
                .engine(Some(7))
                .detectors
                .detectors
                .iter()
                .any(|d| d.id == "email")
        );
        assert!(
            !rules
                .engine(Some(42))
                .detectors
                .detectors
                .iter()
                .any(|d| d.id == "email")
        );
    }
}
