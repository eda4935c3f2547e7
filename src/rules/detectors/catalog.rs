//! The provider-secret catalog: token formats from gitleaks' default rules and Yelp's detect-secrets plugins that can
//! be matched without false positives, because each has a distinctive literal (a prefix, or a fixed infix or suffix
//! such as `:AA`, `.atlasv1.`, `_mmk`) and a fixed alphabet and length. Formats with a vague shape (a bare 32-hex
//! string next to a vendor's name) are left out: entropy or context words alone would destroy ids and hashes.
//!
//! A string is scanned only if it holds a run of [`TOKEN_RUN`] token bytes (every format's tokens do, which a test
//! proves from the patterns); most prose and code does not, and the run test is a few times cheaper than the scan.
//! One Aho-Corasick scan finds the literals; each hit is checked with its format's anchored regex and must be a whole
//! token: no letter, digit or `_` right before it or right after it. The whole token is a match, every part of a
//! two-part token included (`SG.<id>.<secret>`, `glsa_<key>_<crc>`, `dt0c01.<id>.<secret>`); for webhook URLs only
//! the path that is the secret.
//!
//! Formats already covered by `api_token`, `aws_access_key` and `jwt` (Stripe, GitHub, Slack `xox?-`, GitLab PATs,
//! Google API keys, OpenAI and Anthropic keys, npm) are not repeated here; GitLab's routable PATs, whose `.` suffix
//! `api_token` stops at, are, and this detector runs first.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::Regex;

use super::is_word_byte;

/// Which bytes a format's leading part may hold when its literal sits in the middle of the token.
#[derive(Debug, Clone, Copy)]
enum Back {
    /// The literal starts the token.
    None,
    /// Up to this many ASCII digits before the literal (Telegram's `<bot id>:AA...`).
    Digits(usize),
    /// Up to this many lower-case hex digits (Mailchimp's `<32 hex>-us12`).
    Hex(usize),
    /// Up to this many letters, digits, `_`, `~`, `.` (Azure AD secrets, Terraform tokens, MaxMind keys).
    Word(usize),
}

/// One provider format: a name (for tests and docs), the literals that find it, what may precede the literal, and
/// the regex of the whole token (group 1, if present, is the part replaced).
struct Format {
    name: &'static str,
    literals: &'static [&'static str],
    back: Back,
    pattern: &'static str,
}

const fn f(name: &'static str, literals: &'static [&'static str], pattern: &'static str) -> Format {
    Format {
        name,
        literals,
        back: Back::None,
        pattern,
    }
}

const fn fb(name: &'static str, literals: &'static [&'static str], back: Back, pattern: &'static str) -> Format {
    Format {
        name,
        literals,
        back,
        pattern,
    }
}

/// The catalog. Each pattern is anchored at the token's start when compiled.
const FORMATS: &[Format] = &[
    // Cloud platforms and infrastructure.
    f("alibaba_access_key_id", &["LTAI"], r"LTAI[A-Za-z0-9]{20}"),
    f("aws_bedrock_api_key", &["ABSK"], r"ABSK[A-Za-z0-9+/]{109,269}={0,2}"),
    fb(
        "azure_ad_client_secret",
        &["Q~"],
        Back::Word(4),
        r"[A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34}",
    ),
    f("google_oauth_client_secret", &["GOCSPX-"], r"GOCSPX-[A-Za-z0-9_\-]{28}"),
    f(
        "google_oauth_access_token",
        &["ya29."],
        r"ya29\.[A-Za-z0-9_\-]{30,1000}",
    ),
    f(
        "digitalocean_token",
        &["doo_v1_", "dop_v1_", "dor_v1_"],
        r"do[opr]_v1_[a-f0-9]{64}",
    ),
    f(
        "cloudflare_origin_ca_key",
        &["v1.0-"],
        r"v1\.0-[a-f0-9]{24}-[a-f0-9]{146}",
    ),
    f("heroku_api_key", &["HRKU-AA"], r"HRKU-AA[A-Za-z0-9_\-]{58}"),
    f(
        "flyio_token",
        &["fo1_", "fm1a_", "fm1r_", "fm2_"],
        r"fo1_[A-Za-z0-9_\-]{43}|fm(?:1[ar]|2)_[A-Za-z0-9+/]{100,2000}={0,3}",
    ),
    f("vault_service_token", &["hvs."], r"hvs\.[A-Za-z0-9_\-]{90,120}"),
    f("vault_batch_token", &["hvb."], r"hvb\.[A-Za-z0-9_\-]{138,300}"),
    fb(
        "terraform_cloud_token",
        &[".atlasv1."],
        Back::Word(14),
        r"[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_=\-]{60,70}",
    ),
    f("pulumi_token", &["pul-"], r"pul-[a-f0-9]{40}"),
    f("scalingo_token", &["tk-us-"], r"tk-us-[A-Za-z0-9_\-]{48}"),
    f(
        "planetscale_token",
        &["pscale_tkn_", "pscale_oauth_", "pscale_pw_"],
        r"pscale_(?:tkn|oauth|pw)_[A-Za-z0-9_=.\-]{32,64}",
    ),
    f("supabase_token", &["sbp_"], r"sbp_[a-f0-9]{40}"),
    f("databricks_token", &["dapi"], r"dapi[a-f0-9]{32}(?:-[0-9])?"),
    f(
        "doppler_token",
        &["dp.pt.", "dp.st.", "dp.ct.", "dp.sa.", "dp.scim.", "dp.audit."],
        r"dp\.(?:pt|st|ct|sa|scim|audit)\.[A-Za-z0-9]{40,44}",
    ),
    f(
        "dynatrace_token",
        &["dt0c01."],
        r"dt0c01\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{64}",
    ),
    f("openshift_token", &["sha256~"], r"sha256~[A-Za-z0-9_\-]{43}"),
    f("octopus_deploy_key", &["API-"], r"API-[A-Z0-9]{26}"),
    f("artifactory_api_key", &["AKCp"], r"AKCp[A-Za-z0-9]{69}"),
    f("artifactory_reference_token", &["cmVmd"], r"cmVmd[A-Za-z0-9]{59}"),
    f("clickhouse_cloud_key", &["4b1d"], r"4b1d[A-Za-z0-9]{38}"),
    f(
        "age_secret_key",
        &["AGE-SECRET-KEY-1"],
        r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
    ),
    f(
        "onepassword_secret_key",
        &["A3-"],
        r"A3-[A-Z0-9]{6}-(?:[A-Z0-9]{11}|[A-Z0-9]{6}-[A-Z0-9]{5})-[A-Z0-9]{5}-[A-Z0-9]{5}-[A-Z0-9]{5}",
    ),
    f(
        "onepassword_service_token",
        &["ops_eyJ"],
        r"ops_eyJ[A-Za-z0-9+/]{250,4000}={0,3}",
    ),
    f("newrelic_user_key", &["NRAK-"], r"NRAK-[A-Z0-9]{27}"),
    f("grafana_cloud_token", &["glc_"], r"glc_[A-Za-z0-9+/]{32,400}={0,3}"),
    f(
        "grafana_service_account_token",
        &["glsa_"],
        r"glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}",
    ),
    f("grafana_api_key", &["eyJrIjoi"], r"eyJrIjoi[A-Za-z0-9]{70,400}={0,3}"),
    // Code hosting, CI and package registries.
    f(
        "gitlab_token",
        &[
            "glpat-",
            "glptt-",
            "gldt-",
            "glft-",
            "glimt-",
            "glagent-",
            "gloas-",
            "glrt-",
            "glsoat-",
            "glcbt-",
            "glffct-",
            "GR1348941",
        ],
        r"glpat-[A-Za-z0-9_\-]{20,300}(?:\.[0-9a-z]{2}\.?[0-9a-z]{7})?|glrt-(?:t[0-9]_)?[A-Za-z0-9_\-]{20,300}(?:\.[0-9a-z]{2}\.?[0-9a-z]{7})?|glptt-[0-9a-f]{40}|gl(?:dt|ft|soat|ffct)-[A-Za-z0-9_\-]{20}|glimt-[A-Za-z0-9_\-]{25}|glagent-[A-Za-z0-9_\-]{50}|gloas-[A-Za-z0-9_\-]{64}|glcbt-[A-Za-z0-9]{1,5}_[A-Za-z0-9_\-]{20}|GR1348941[A-Za-z0-9_\-]{20}",
    ),
    f(
        "pypi_token",
        &["pypi-AgEIcHlwaS5vcmc"],
        r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,1000}",
    ),
    f("rubygems_token", &["rubygems_"], r"rubygems_[a-f0-9]{48}"),
    f("clojars_token", &["CLOJARS_"], r"CLOJARS_[A-Za-z0-9]{60}"),
    f("nuget_api_key", &["oy2"], r"oy2[a-z0-9]{43}"),
    f("docker_hub_token", &["dckr_pat_"], r"dckr_pat_[A-Za-z0-9_\-]{27}"),
    f(
        "sourcegraph_token",
        &["sgp_"],
        r"sgp_(?:[a-fA-F0-9]{16}|local)_[a-fA-F0-9]{40}|sgp_[a-fA-F0-9]{40}",
    ),
    f("readme_token", &["rdme_"], r"rdme_[a-z0-9]{70}"),
    f("prefect_token", &["pnu_"], r"pnu_[A-Za-z0-9]{36}"),
    f("infracost_token", &["ico-"], r"ico-[A-Za-z0-9]{32}"),
    f("postman_token", &["PMAK-"], r"PMAK-[A-Fa-f0-9]{24}-[A-Fa-f0-9]{34}"),
    f("atlassian_token", &["ATATT3"], r"ATATT3[A-Za-z0-9_=\-]{186}"),
    f("linear_token", &["lin_api_"], r"lin_api_[A-Za-z0-9]{40}"),
    f("notion_token", &["ntn_"], r"ntn_[0-9]{11}[A-Za-z0-9]{35}"),
    f(
        "airtable_harness_hubspot_token",
        &["pat", "sat."],
        r"pat[A-Za-z0-9]{14}\.[a-f0-9]{64}|(?:pat|sat)\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9]{24}\.[A-Za-z0-9]{20}|pat-(?:na|eu)[0-9]-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}",
    ),
    f("frameio_token", &["fio-u-"], r"fio-u-[A-Za-z0-9_=\-]{64}"),
    f("sentry_user_token", &["sntryu_"], r"sntryu_[a-f0-9]{64}"),
    f(
        "sentry_org_token",
        &["sntrys_"],
        r"sntrys_eyJ[A-Za-z0-9+/]{20,600}={0,2}_[A-Za-z0-9+/]{43}",
    ),
    f(
        "settlemint_token",
        &["sm_aat_", "sm_pat_", "sm_sat_"],
        r"sm_[aps]at_[A-Za-z0-9]{16}",
    ),
    // Messaging, email and webhooks.
    f(
        "slack_app_token",
        &["xapp-"],
        r"xapp-[0-9]-[A-Za-z0-9]{8,14}-[0-9]{8,16}-[A-Za-z0-9]{20,80}",
    ),
    f(
        "slack_config_token",
        &["xoxe.xox", "xoxe-"],
        r"xoxe\.xox[bp]-[0-9]-[A-Za-z0-9]{163,166}|xoxe-[0-9]-[A-Za-z0-9]{146}",
    ),
    f(
        "slack_legacy_token",
        &["xoxo-"],
        r"xoxo-[0-9]{1,16}-[0-9]{1,16}-[0-9]{1,16}-[a-fA-F0-9]{12,64}",
    ),
    f(
        "slack_webhook",
        &["hooks.slack.com/"],
        r"hooks\.slack\.com/((?:services|workflows|triggers)/[A-Za-z0-9+/]{43,56})",
    ),
    f(
        "discord_webhook",
        &["discord.com/api/webhooks/", "discordapp.com/api/webhooks/"],
        r"discord(?:app)?\.com/api/webhooks/([0-9]{17,20}/[A-Za-z0-9_\-]{60,68})",
    ),
    f(
        "teams_webhook",
        &[".webhook.office.com/webhookb2/"],
        r"\.webhook\.office\.com/webhookb2/([A-Za-z0-9\-]{36}@[A-Za-z0-9\-]{36}/IncomingWebhook/[A-Za-z0-9]{32}/[A-Za-z0-9\-]{36}(?:/[A-Za-z0-9_\-]{20,60})?)",
    ),
    fb(
        "telegram_bot_token",
        &[":AA"],
        Back::Digits(10),
        r"[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}",
    ),
    f("sendgrid_key", &["SG."], r"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}"),
    f("sendinblue_key", &["xkeysib-"], r"xkeysib-[a-f0-9]{64}-[A-Za-z0-9]{16}"),
    fb("mailchimp_key", &["-us"], Back::Hex(32), r"[0-9a-f]{32}-us[0-9]{1,2}"),
    f("twilio_api_key", &["SK"], r"SK[0-9a-fA-F]{32}"),
    f(
        "mapbox_secret_token",
        &["sk.eyJ"],
        r"sk\.eyJ[A-Za-z0-9_\-]{20,1000}\.[A-Za-z0-9_\-]{20,100}",
    ),
    // Payments and commerce.
    f(
        "square_token",
        &["sq0atp-", "sq0csp-", "EAAA"],
        r"sq0(?:atp|csp)-[A-Za-z0-9_\-]{22,60}|EAAA[A-Za-z0-9_\-]{60}",
    ),
    f(
        "facebook_access_token",
        &["EAAC", "EAAM"],
        r"EAA[CM][A-Za-z0-9]{100,1000}",
    ),
    f(
        "shopify_token",
        &["shpat_", "shpca_", "shppa_", "shpss_"],
        r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}",
    ),
    f(
        "shippo_token",
        &["shippo_live_", "shippo_test_"],
        r"shippo_(?:live|test)_[a-fA-F0-9]{40}",
    ),
    f("easypost_key", &["EZAK", "EZTK"], r"EZ[AT]K[A-Za-z0-9]{54}"),
    f(
        "duffel_token",
        &["duffel_test_", "duffel_live_"],
        r"duffel_(?:test|live)_[A-Za-z0-9_=\-]{43}",
    ),
    f(
        "flutterwave_key",
        &["FLWSECK_TEST-", "FLWSECK-"],
        r"FLWSECK(?:_TEST)?-[a-hA-H0-9]{32}-X|FLWSECK_TEST-[a-hA-H0-9]{12}",
    ),
    f("adobe_client_secret", &["p8e-"], r"p8e-[A-Za-z0-9]{32}"),
    fb(
        "maxmind_license_key",
        &["_mmk"],
        Back::Word(36),
        r"[A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk",
    ),
    f(
        "intra42_secret",
        &["s-s4t2ud-", "s-s4t2af-"],
        r"s-s4t2(?:ud|af)-[a-f0-9]{64}",
    ),
    // AI providers.
    f(
        "huggingface_token",
        &["hf_", "api_org_"],
        r"hf_[A-Za-z]{34}|api_org_[A-Za-z]{34}",
    ),
    f("groq_key", &["gsk_"], r"gsk_[A-Za-z0-9]{52}"),
    f("xai_key", &["xai-"], r"xai-[A-Za-z0-9]{80}"),
    f("replicate_token", &["r8_"], r"r8_[A-Za-z0-9]{37}"),
    f("perplexity_key", &["pplx-"], r"pplx-[A-Za-z0-9]{48}"),
    f(
        "langsmith_key",
        &["lsv2_pt_", "lsv2_sk_"],
        r"lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}",
    ),
    f("pinecone_key", &["pcsk_"], r"pcsk_[A-Za-z0-9]{4,8}_[A-Za-z0-9]{40,80}"),
    f("tavily_key", &["tvly-"], r"tvly-(?:dev-|prod-)?[A-Za-z0-9]{32}"),
];

/// The shortest token any format matches: strings shorter than this are not scanned.
pub const MIN_LEN: usize = 20;

/// Every catalog token holds at least this many consecutive [`is_token_byte`] bytes, whatever its alphabet
/// choices (test `every_format_holds_a_token_run`).
const TOKEN_RUN: u32 = 20;

/// Letters, digits and the punctuation token alphabets use (`_-.~+/=`): a run of these is where a token can be.
const TOKEN_BYTES: [bool; 256] = super::alphanumeric_and(b"_-.~+/=");

fn is_token_byte(b: u8) -> bool {
    TOKEN_BYTES[usize::from(b)]
}

/// Whether `bytes` holds [`TOKEN_RUN`] token bytes in a row. Each window of that length is read from its end: the
/// last non-token byte in it moves the next window past it, so prose (a space every few bytes) costs a few reads per
/// window rather than one per byte.
fn has_token_run(bytes: &[u8]) -> bool {
    let run = TOKEN_RUN as usize;
    let mut start = 0;
    while let Some(window) = bytes.get(start..start + run) {
        match window.iter().rposition(|&b| !is_token_byte(b)) {
            None => return true,
            Some(at) => start += at + 1,
        }
    }
    false
}

/// The literal automaton, and for each literal the format it belongs to and that format's compiled regex.
struct Catalog {
    literals: AhoCorasick,
    format_of: Vec<usize>,
    regexes: Vec<Regex>,
}

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    super::mark_built(super::Kind::ProviderSecret);
    let mut literals = Vec::new();
    let mut format_of = Vec::new();
    for (index, format) in FORMATS.iter().enumerate() {
        for literal in format.literals {
            literals.push(*literal);
            format_of.push(index);
        }
    }
    let regexes = FORMATS
        .iter()
        .map(|format| {
            Regex::new(&format!("^(?:{})", format.pattern))
                .unwrap_or_else(|e| panic!("catalog format {}: {e}", format.name))
        })
        .collect();
    Catalog {
        // Standard semantics so overlapping literals (`pat` inside `glpat-`) are all reported. A full DFA: with
        // over 64 literals there is no vectorised searcher, and one table lookup per byte is about 2.5 times faster
        // than the default contiguous NFA (benches/README.md); its table is a few hundred KiB, built once.
        literals: AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&literals)
            .expect("catalog literals compile"),
        format_of,
        regexes,
    }
});

/// Builds the literal automaton and the formats' regexes now rather than on first use.
pub fn warm() {
    LazyLock::force(&CATALOG);
}

/// Whether `text` holds a token run and any catalog literal (the prefilter's test: every match contains both).
pub fn maybe(text: &str) -> bool {
    text.len() >= MIN_LEN && has_token_run(text.as_bytes()) && CATALOG.literals.is_match(text)
}

/// Calls `push(start, end)` for every catalog token in `text`, in order, without overlaps.
pub fn find(text: &str, push: &mut dyn FnMut(usize, usize)) {
    if text.len() < MIN_LEN {
        return;
    }
    let catalog = &*CATALOG;
    let bytes = text.as_bytes();
    let mut last_end = 0;
    let mut found: Vec<(usize, usize)> = Vec::new();
    for hit in catalog.literals.find_overlapping_iter(text) {
        let index = catalog.format_of[hit.pattern().as_usize()];
        let format = &FORMATS[index];
        let literal_at = hit.start();
        let start = match format.back {
            Back::None => literal_at,
            Back::Digits(max) => back_run(bytes, literal_at, max, |b| b.is_ascii_digit()),
            Back::Hex(max) => back_run(bytes, literal_at, max, |b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            Back::Word(max) => back_run(bytes, literal_at, max, |b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b'~' | b'.')
            }),
        };
        // A literal that starts with punctuation (`.webhook.office.com/`) follows a host name: no boundary there.
        let needs_boundary = !matches!(format.back, Back::None) || is_word_byte(bytes[literal_at]);
        if start < last_end || (needs_boundary && !boundary_before(bytes, start, format.name)) {
            continue;
        }
        let Some(caps) = catalog.regexes[index].captures(&text[start..]) else {
            continue;
        };
        let whole = caps.get(0).map_or(0, |m| m.end());
        let end = start + whole;
        if bytes.get(end).copied().is_some_and(is_word_byte) {
            continue;
        }
        let (s, e) = caps
            .get(1)
            .map_or((start, end), |g| (start + g.start(), start + g.end()));
        found.push((s, e));
        last_end = end;
    }
    // Overlapping literal hits report in end order; tokens are disjoint, so sorting by start is enough.
    found.sort_unstable();
    for (s, e) in found {
        push(s, e);
    }
}

/// Where a token whose literal is at `at` starts: the start of the run of up to `max` bytes of `class` before it.
/// A longer run is not this token (it would be part of a longer word): `usize::MAX`, which no check accepts.
fn back_run(bytes: &[u8], at: usize, max: usize, class: impl Fn(u8) -> bool) -> usize {
    let mut start = at;
    while start > 0 && class(bytes[start - 1]) {
        start -= 1;
        if at - start > max {
            return usize::MAX;
        }
    }
    start
}

/// Whether a token may start at `start`: not inside a word. A Telegram bot token also starts right after `/bot` in
/// the Bot API's URLs (`https://api.telegram.org/bot<token>/sendMessage`).
fn boundary_before(bytes: &[u8], start: usize, name: &str) -> bool {
    if start == usize::MAX {
        return false;
    }
    if start == 0 || !is_word_byte(bytes[start - 1]) {
        return true;
    }
    name == "telegram_bot_token" && bytes[..start].ends_with(b"/bot")
}

/// Every format's name and pattern, for the generator test.
#[cfg(test)]
pub fn patterns() -> impl Iterator<Item = (&'static str, &'static str)> {
    FORMATS.iter().map(|f| (f.name, f.pattern))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find(text, &mut |s, e| out.push(&text[s..e]));
        out
    }

    /// Real-shaped examples (made up, valid in form), one or more per format.
    pub const EXAMPLES: &[(&str, &str)] = &[
        ("alibaba_access_key_id", "LTAI5tQ7pSp4rWx9ZbNmK3Jd"),
        ("azure_ad_client_secret", "abc8Q~Xy1z2W3v4U5t6S7r8Q9p0O1n2M3l4K5j6"),
        ("google_oauth_client_secret", "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"),
        (
            "google_oauth_access_token",
            "ya29.a0AfH6SMBx1y2z3Q4w5E6r7T8y9U0i1O2p3A4s5D6f7G8h",
        ),
        (
            "digitalocean_token",
            "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        (
            "heroku_api_key",
            "HRKU-AA0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
        ),
        ("pulumi_token", "pul-0123456789abcdef0123456789abcdef01234567"),
        ("supabase_token", "sbp_0123456789abcdef0123456789abcdef01234567"),
        ("databricks_token", "dapi0123456789abcdef0123456789abcdef"),
        ("doppler_token", "dp.pt.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfG"),
        (
            "dynatrace_token",
            "dt0c01.ABCDEFGHIJKLMNOPQRSTUVWX.ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz01",
        ),
        ("openshift_token", "sha256~AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdE"),
        ("octopus_deploy_key", "API-ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        (
            "age_secret_key",
            "AGE-SECRET-KEY-1QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7LQPZRY9X8GF2TVDW0S3JN54KHCE",
        ),
        ("onepassword_secret_key", "A3-ABC123-DEF456GHI78-JKL90-MNO12-PQR34"),
        ("newrelic_user_key", "NRAK-ABCDEFGHIJKLMNOPQRSTUVWXYZ0"),
        (
            "grafana_service_account_token",
            "glsa_AbCdEfGhIjKlMnOpQrStUvWxYz012345_0a1b2c3d",
        ),
        ("gitlab_token", "glpat-AbCdEfGhIjKlMnOpQrSt"),
        ("gitlab_token", "glpat-AbCdEfGhIjKlMnOpQrStUvWxYz0.01.0abc123"),
        ("gitlab_token", "glrt-t1_AbCdEfGhIjKlMnOpQrStUvWxYz0.01a0bc123"),
        ("gitlab_token", "glptt-0123456789abcdef0123456789abcdef01234567"),
        ("gitlab_token", "GR1348941AbCdEfGhIjKlMnOpQrSt"),
        (
            "rubygems_token",
            "rubygems_0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        ("docker_hub_token", "dckr_pat_AbCdEfGhIjKlMnOpQrStUvWxYz0"),
        (
            "sourcegraph_token",
            "sgp_0123456789abcdef_0123456789abcdef0123456789abcdef01234567",
        ),
        ("prefect_token", "pnu_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
        (
            "postman_token",
            "PMAK-0123456789abcdef01234567-0123456789abcdef0123456789abcdef01",
        ),
        ("linear_token", "lin_api_AbCdEfGhIjKlMnOpQrStUvWxYz01234567890123"),
        (
            "airtable_harness_hubspot_token",
            "patAbCdEfGhIjKlMn.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        (
            "airtable_harness_hubspot_token",
            "pat-na1-01234567-89ab-cdef-0123-456789abcdef",
        ),
        (
            "sentry_user_token",
            "sntryu_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ),
        (
            "sentry_org_token",
            "sntrys_eyJpYXQiOjE2ODQ4MzQ2NTMuNzI0NTYxLCJ1cmwiOiJodHRwczovL3NlbnRyeS5pbyJ9_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789+/AbCdE",
        ),
        ("settlemint_token", "sm_pat_AbCdEfGhIjKlMnOp"),
        (
            "slack_app_token",
            "xapp-1-A0123456789-0123456789012-abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789",
        ),
        (
            "slack_webhook",
            "hooks.slack.com/services/T0123ABCD/B0123ABCD/AbCdEfGhIjKlMnOpQrStUvWx",
        ),
        ("telegram_bot_token", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"),
        (
            "sendgrid_key",
            "SG.AbCdEfGhIjKlMnOpQrStUv.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdE",
        ),
        ("mailchimp_key", "0123456789abcdef0123456789abcdef-us12"),
        ("twilio_api_key", "SK0123456789abcdef0123456789abcdef"),
        ("square_token", "sq0atp-AbCdEfGhIjKlMnOpQrStUv"),
        ("shopify_token", "shpat_0123456789abcdef0123456789abcdef"),
        (
            "easypost_key",
            "EZAKAbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQr",
        ),
        ("huggingface_token", "hf_AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh"),
        ("groq_key", "gsk_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOp"),
        ("replicate_token", "r8_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789A"),
        (
            "perplexity_key",
            "pplx-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKl",
        ),
        ("langsmith_key", "lsv2_pt_0123456789abcdef0123456789abcdef_0123456789"),
        ("tavily_key", "tvly-dev-AbCdEfGhIjKlMnOpQrStUvWxYz012345"),
        ("maxmind_license_key", "AbC123_AbCdEfGhIjKlMnOpQrStUvWxYz012_mmk"),
        (
            "terraform_cloud_token",
            "AbCdEfGhIjKlMn.atlasv1.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789AbCdEfGhIjKlMnOpQrStUvWxYz01",
        ),
    ];

    #[test]
    fn every_example_is_found_whole_in_context() {
        let names: Vec<&str> = patterns().map(|(name, _)| name).collect();
        for (name, token) in EXAMPLES {
            assert!(names.contains(name), "example for unknown format {name}");
            for text in [
                token.to_string(),
                format!("key={token}&x=1"),
                format!("\"{token}\""),
                // A full stop after the token, unless the format's alphabet holds `.` (it may end a token there).
                if matches!(*name, "azure_ad_client_secret" | "planetscale_token") {
                    format!("using {token} ")
                } else {
                    format!("using {token}.")
                },
                format!("Authorization: {token}\n"),
            ] {
                let want = if *name == "slack_webhook" {
                    token.trim_start_matches("hooks.slack.com/")
                } else {
                    token
                };
                assert_eq!(tokens(&text), vec![want], "{name} in {text:?}");
                assert!(maybe(&text), "{name}: the prefilter must pass {text:?}");
            }
        }
    }

    #[test]
    fn no_format_is_shorter_than_the_prefilter_minimum() {
        for (name, pattern) in patterns() {
            let hir = regex_syntax::parse(pattern).expect("pattern parses");
            let min = hir.properties().minimum_len().expect("a bounded minimum");
            assert!(min >= MIN_LEN, "{name}: tokens of {min} bytes would be skipped");
        }
    }

    /// Lower bounds on the runs of token bytes in every string a pattern matches.
    #[derive(Clone, Copy)]
    struct Runs {
        /// `Some(n)`: every match is all token bytes, at least `n` of them.
        all: Option<usize>,
        /// The run that every match starts with, ends with, and the longest one it holds.
        prefix: usize,
        suffix: usize,
        longest: usize,
    }

    impl Runs {
        const EMPTY: Runs = Runs {
            all: Some(0),
            prefix: 0,
            suffix: 0,
            longest: 0,
        };

        fn then(self, next: Runs) -> Runs {
            Runs {
                all: self.all.zip(next.all).map(|(a, b)| a + b),
                prefix: self.all.map_or(self.prefix, |n| n + next.prefix),
                suffix: next.all.map_or(next.suffix, |n| self.suffix + n),
                longest: self.longest.max(next.longest).max(self.suffix + next.prefix),
            }
        }

        fn or(self, other: Runs) -> Runs {
            Runs {
                all: self.all.zip(other.all).map(|(a, b)| a.min(b)),
                prefix: self.prefix.min(other.prefix),
                suffix: self.suffix.min(other.suffix),
                longest: self.longest.min(other.longest),
            }
        }

        fn byte(token: bool) -> Runs {
            let n = usize::from(token);
            Runs {
                all: token.then_some(1),
                prefix: n,
                suffix: n,
                longest: n,
            }
        }

        /// The worst case over every string `hir` matches: a class with any non-token character may put one anywhere.
        fn of(hir: &regex_syntax::hir::Hir) -> Runs {
            use regex_syntax::hir::{Class, HirKind};
            match hir.kind() {
                HirKind::Empty | HirKind::Look(_) => Runs::EMPTY,
                HirKind::Literal(lit) => lit
                    .0
                    .iter()
                    .fold(Runs::EMPTY, |runs, &b| runs.then(Runs::byte(is_token_byte(b)))),
                HirKind::Class(Class::Unicode(class)) => Runs::byte(
                    class
                        .ranges()
                        .iter()
                        .all(|r| (r.start()..=r.end()).all(|c| c.is_ascii() && is_token_byte(c as u8))),
                ),
                HirKind::Class(Class::Bytes(class)) => {
                    Runs::byte(class.ranges().iter().all(|r| (r.start()..=r.end()).all(is_token_byte)))
                }
                HirKind::Repetition(rep) => {
                    let one = Runs::of(&rep.sub);
                    (0..rep.min).fold(Runs::EMPTY, |runs, _| runs.then(one))
                }
                HirKind::Capture(cap) => Runs::of(&cap.sub),
                HirKind::Concat(parts) => parts.iter().fold(Runs::EMPTY, |runs, part| runs.then(Runs::of(part))),
                HirKind::Alternation(alts) => alts.iter().map(Runs::of).reduce(Runs::or).unwrap_or(Runs::EMPTY),
            }
        }
    }

    /// The scan gate can never hide a token: whatever characters a format's classes pick, the token holds a run of
    /// at least `TOKEN_RUN` token bytes.
    #[test]
    fn every_format_holds_a_token_run() {
        for (name, pattern) in patterns() {
            let hir = regex_syntax::parse(pattern).expect("pattern parses");
            let runs = Runs::of(&hir);
            let longest = runs.all.unwrap_or(0).max(runs.longest);
            assert!(
                longest >= TOKEN_RUN as usize,
                "{name}: a token may hold only {longest} token bytes in a row"
            );
        }
        for (name, example) in EXAMPLES {
            assert!(has_token_run(example.as_bytes()), "{name}: {example}");
        }
        let prose = "The assistant reviews the order history and explains the refund policy in plain words.";
        assert!(!has_token_run(prose.as_bytes()));
        assert!(
            !maybe(&format!("{prose} SK pat")),
            "literals without a run of token bytes are not scanned"
        );
    }

    #[test]
    fn the_skipping_run_test_agrees_with_counting() {
        let naive = |bytes: &[u8]| {
            let mut run = 0;
            bytes.iter().any(|&b| {
                run = if is_token_byte(b) { run + 1 } else { 0 };
                run >= TOKEN_RUN
            })
        };
        let mut state = 0x5EED_0006_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 90) as usize;
            // Mostly token bytes, with a space now and then: runs of every length around the threshold.
            let text: Vec<u8> = (0..len)
                .map(|i| {
                    if (state >> (i % 60)) % 23 == 0 {
                        b' '
                    } else {
                        b'a' + (i % 26) as u8
                    }
                })
                .collect();
            assert_eq!(
                has_token_run(&text),
                naive(&text),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn telegram_in_bot_api_urls() {
        let text = "POST https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1/sendMessage";
        assert_eq!(tokens(text), ["123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"]);
    }

    #[test]
    fn look_alikes_stay() {
        for text in [
            "path/to/file.py",
            "the TASK0123456789abcdef0123456789abcdef failed",
            "SK0123456789abcdef0123456789abcdef0", // one hex digit too many: not a whole token
            "dapi0123456789abcdef",                // too short
            "API-VERSION-2024-01-01",
            "sha256~short",
            "shpat_short",
            "hf_short_name",
            "my-usage-us12",
            "0123456789abcdef0123456789abcdef-us",
            "12:AA",
            "time 12:34:56 AAH",
            "glpat-short",
            "cache:9ec79c33ec9942ab8353589fcb2e04dc",
            "xSG.AbCdEfGhIjKlMnOpQrStUv.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-AbCdE",
            "LTAI5tQ7pSp4rWx9ZbNmK3JdEXTRA",
        ] {
            assert!(tokens(text).is_empty(), "{text:?} gave {:?}", tokens(text));
        }
    }
}
