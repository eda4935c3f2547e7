//! Seeded generator tests for the detectors added for breadth (user paths, IPv6, labelled SSN/ITIN, the provider
//! catalog, international phones), as the digit detectors have: random valid values in random surroundings must
//! always be found exactly, and random look-alikes (ids, hashes, timestamps, versions, URL paths, code) never.
//! Each test runs through a [`DetectorSet`] with that one kind, so the prefilter is part of what is tested.

use regex_syntax::hir::{Class, Hir, HirKind};

use super::*;

/// xorshift64: deterministic, no dependency. Also drives `taxid`'s comparison with the full label scan.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn chars(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| char::from(*self.pick(alphabet))).collect()
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const HEX: &[u8] = b"0123456789abcdef";

fn one(kind: Kind) -> DetectorSet {
    DetectorSet::new(vec![Detector {
        kind,
        id: kind.id().into(),
        replacement: "[redacted]".into(),
        action: Action::Replace,
        regex: None,
    }])
}

fn found(set: &DetectorSet, text: &str) -> Vec<String> {
    let mut hits = Vec::new();
    set.find(text, &mut hits);
    hits.iter().map(|h| text[h.start..h.end].to_string()).collect()
}

/// Text around a planted value: prose, JSON, log and query-string shapes of the SDKs.
const BEFORE: &[&str] = &[
    "", " ", "at ", "\"", "'", "(", "[", "value=", "from ", "msg: ", "\n", "x y z ",
];
const AFTER: &[&str] = &[
    "",
    " ",
    "\"",
    "'",
    ")",
    "]",
    ", next",
    ".",
    ";",
    "&a=1",
    "\n",
    " and more",
];

fn assert_found_in_context(set: &DetectorSet, rng: &mut Rng, value: &str, want: &str) {
    let text = format!("{}{value}{}", rng.pick(BEFORE), rng.pick(AFTER));
    assert_eq!(
        found(set, &text),
        vec![want.to_string()],
        "{:?} in {text:?}",
        set.detectors[0].kind
    );
}

fn assert_none(set: &DetectorSet, text: &str) {
    assert!(
        found(set, text).is_empty(),
        "{:?} must find nothing in {text:?}, found {:?}",
        set.detectors[0].kind,
        found(set, text)
    );
}

/// Ids, hashes, timestamps and versions every detector must leave alone.
fn common_look_alike(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => rng.chars(HEX, 32),
        1 => rng.chars(HEX, 40),
        2 => format!(
            "{}-{}-4{}-a{}-{}",
            rng.chars(HEX, 8),
            rng.chars(HEX, 4),
            rng.chars(HEX, 3),
            rng.chars(HEX, 3),
            rng.chars(HEX, 12)
        ),
        3 => format!("17{}", rng.chars(b"0123456789", 11)),
        4 => format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}.{}Z",
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
            rng.chars(b"0123456789", 6)
        ),
        5 => format!(
            "{}.{}.{}+build.{}",
            rng.below(20),
            rng.below(30),
            rng.below(100),
            rng.below(10000)
        ),
        6 => format!("2026-11-22T22:26:34+{:02}:{:02}", rng.below(14), rng.below(60)),
        7 => format!(
            "{}:{}",
            rng.pick(&["localhost", "10.0.0.12", "db.internal"]),
            1024 + rng.below(60000)
        ),
        8 => {
            let len = 10 + rng.below(60);
            rng.chars(ALNUM, len)
        }
        _ => format!("took {} ms, {} tokens", rng.below(100000), rng.below(10000)),
    }
}

#[test]
fn generated_user_paths() {
    let set = one(Kind::UserPath);
    let mut rng = Rng(0x5EED_0001);
    let name_chars = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
    for _ in 0..3000 {
        let rest = rng.below(15);
        let mut user = rng.chars(ALNUM, 1) + &rng.chars(name_chars, rest);
        if ["Shared", "Public", "Default", "Guest"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&user))
        {
            user.push('x');
        }
        let tail = rng.pick(&[
            "app/main.py",
            "src/index.js",
            "Library/Caches/x",
            "venv/lib/site.py",
            "",
        ]);
        let path = match rng.below(6) {
            0 => format!("/home/{user}/{tail}"),
            1 => format!("/Users/{user}/{tail}"),
            2 => format!("C:\\Users\\{user}\\{}", tail.replace('/', "\\")),
            3 => format!("c:/users/{user}/{tail}"),
            4 => format!("C:\\\\Users\\\\{user}\\\\{}", tail.replace('/', "\\\\")),
            _ => format!("file:///Users/{user}/{tail}"),
        };
        let before = rng.pick(&["", " ", "at ", "\"", "'", "(", "[", "cwd=", "File \"", "\n"]);
        let after = rng.pick(&["", " ", "\"", "'", ")", ":42", ", line 3", "\n"]);
        let text = format!("{before}{path}{after}");
        assert_eq!(found(&set, &text), vec![user.clone()], "in {text:?}");
    }
    for _ in 0..3000 {
        let len = 1 + rng.below(12);
        let user = rng.chars(ALNUM, len);
        let text = match rng.below(8) {
            0 => format!("https://example.com/home/{user}/profile"),
            1 => format!("/api/Users/{user}/orders"),
            2 => format!("/homes/{user}/x"),
            3 => format!("{user}/home/{user}/x"),
            4 => format!("/var/lib/{user}/home"),
            5 => format!("/usr/lib/{user}/Users"),
            6 => format!("x{}:\\Users\\{user}\\y", rng.pick(&["C", "D"])),
            _ => common_look_alike(&mut rng),
        };
        assert_none(&set, &text);
    }
}

#[test]
fn generated_ipv6() {
    let set = one(Kind::Ipv6);
    let mut rng = Rng(0x5EED_0002);
    let mut public = 0;
    while public < 3000 {
        let mut segments = [0u16; 8];
        for s in &mut segments {
            *s = match rng.below(3) {
                0 => 0,
                _ => rng.below(0x10000) as u16,
            };
        }
        segments[0] = 0x2000 + rng.below(0x2000) as u16;
        if segments[0] < 0x1000 * 2 + 0x100 {
            segments[0] |= 0x100; // keep four digits
        }
        let addr = std::net::Ipv6Addr::from(segments);
        if !ipv6::is_public(addr) {
            continue;
        }
        public += 1;
        let text = match rng.below(3) {
            0 => addr.to_string(),
            1 => segments
                .iter()
                .map(|s| format!("{s:04x}"))
                .collect::<Vec<_>>()
                .join(":"),
            _ => addr.to_string().to_uppercase(),
        };
        if text.len() < 5 || !text.as_bytes()[..4].iter().all(u8::is_ascii_hexdigit) {
            continue;
        }
        let value = if rng.below(4) == 0 {
            format!("[{text}]:443")
        } else {
            text.clone()
        };
        let shown = format!("{}{value}{}", rng.pick(BEFORE), rng.pick(&AFTER[..AFTER.len() - 1]));
        assert_eq!(found(&set, &shown), vec![text.clone()], "in {shown:?}");
    }
    for _ in 0..3000 {
        let text = match rng.below(9) {
            0 => format!("2001:db8:{:x}::{:x}", rng.below(0x10000), rng.below(0x10000)),
            1 => format!("fe80::{:x}:{:x}", rng.below(0x10000), rng.below(0x10000)),
            2 => format!(
                "fd{:02x}:{:x}::{:x}",
                rng.below(256),
                rng.below(0x10000),
                rng.below(0x10000)
            ),
            3 => format!("::ffff:10.{}.{}.{}", rng.below(256), rng.below(256), 1 + rng.below(254)),
            4 => format!("{:02}:{:02}:{:02}", rng.below(24), rng.below(60), rng.below(60)),
            5 => (0..6)
                .map(|_| format!("{:02x}", rng.below(256)))
                .collect::<Vec<_>>()
                .join(":"),
            6 => format!(
                "{}::{}",
                rng.pick(&["std", "Foo", "crate", "self"]),
                rng.chars(ALNUM, 5)
            ),
            7 => format!("ff0{}::{:x}", rng.below(10), rng.below(0x10000)),
            _ => common_look_alike(&mut rng),
        };
        assert_none(&set, &text);
    }
}

fn ssn_digits(rng: &mut Rng) -> [u32; 3] {
    let mut area = 1 + rng.below(899) as u32;
    if area == 666 {
        area = 667;
    }
    [area, 1 + rng.below(99) as u32, 1 + rng.below(9999) as u32]
}

fn itin_digits(rng: &mut Rng) -> [u32; 3] {
    let groups: Vec<u32> = (50..=65).chain(70..=88).chain(90..=92).chain(94..=99).collect();
    [900 + rng.below(100) as u32, *rng.pick(&groups), rng.below(10000) as u32]
}

#[test]
fn generated_labelled_tax_ids() {
    let set = one(Kind::LabelledTaxId);
    let mut rng = Rng(0x5EED_0003);
    let labels = [
        "SSN",
        "ssn",
        "SSN#",
        "Social Security Number",
        "social security no.",
        "Tax ID",
        "TIN",
        "ITIN",
        "taxpayer id",
    ];
    let joins = [" ", ": ", "=", " #", " is ", ": \"", " number "];
    for _ in 0..3000 {
        let [a, g, s] = if rng.below(2) == 0 {
            ssn_digits(&mut rng)
        } else {
            itin_digits(&mut rng)
        };
        let number = match rng.below(4) {
            0 | 1 => format!("{a:03}{g:02}{s:04}"),
            2 => format!("{a:03} {g:02} {s:04}"),
            _ => format!("{a:03}-{g:02}-{s:04}"),
        };
        if s == 0 && a < 900 {
            continue;
        }
        let text = format!(
            "{}{}{}{number}{}",
            rng.pick(BEFORE),
            rng.pick(&labels),
            rng.pick(&joins),
            rng.pick(&AFTER[..AFTER.len() - 1])
        );
        assert_eq!(found(&set, &text), vec![number.clone()], "in {text:?}");
    }
    for _ in 0..3000 {
        let [a, g, s] = ssn_digits(&mut rng);
        let text = match rng.below(6) {
            0 => format!("order {a:03}{g:02}{s:04}"),
            1 => format!("id={a:03}{g:02}{s:04}"),
            2 => format!("SSN 000{g:02}{s:04}"),
            3 => format!("ssn {a:03}00{s:04}"),
            4 => format!("SSN {a:03}{g:02}{s:04}{}", rng.below(10)),
            _ => format!("ssn lookup took {a:03}{g:02}{s:04} ms; {}", common_look_alike(&mut rng)),
        };
        assert_none(&set, &text);
    }
    let set = one(Kind::Itin);
    for _ in 0..2000 {
        let [a, g, s] = itin_digits(&mut rng);
        let sep = rng.pick(&["-", " "]);
        let number = format!("{a:03}{sep}{g:02}{sep}{s:04}");
        assert_found_in_context(&set, &mut rng, &number, &number);
        let [a, g, s] = ssn_digits(&mut rng);
        assert_none(
            &set,
            &format!(
                "{}",
                format_args!("x {a:03}-{g:02}-{s:04} {}", common_look_alike(&mut rng))
            ),
        );
        let bad_group = *rng.pick(&[0u32, 12, 45, 66, 69, 89, 93]);
        assert_none(&set, &format!("{:03}-{bad_group:02}-{s:04}", 900 + a % 100));
    }
}

/// A random string the regex `hir` matches (catalog patterns use literals, classes, repetitions, alternations and
/// groups only).
fn sample(rng: &mut Rng, hir: &Hir, out: &mut String) {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(lit) => out.push_str(std::str::from_utf8(&lit.0).expect("ASCII literal")),
        HirKind::Class(Class::Unicode(class)) => {
            let ranges = class.ranges();
            let range = rng.pick(ranges);
            let span = u32::from(range.end()) - u32::from(range.start()) + 1;
            let c = char::from_u32(u32::from(range.start()) + rng.below(span as usize) as u32).expect("a char");
            out.push(c);
        }
        HirKind::Class(Class::Bytes(class)) => {
            let range = rng.pick(class.ranges());
            out.push(char::from(
                range.start() + rng.below(usize::from(range.end() - range.start()) + 1) as u8,
            ));
        }
        HirKind::Repetition(rep) => {
            let max = rep.max.unwrap_or(rep.min + 8).min(rep.min + 40);
            let n = rep.min as usize + rng.below((max - rep.min) as usize + 1);
            for _ in 0..n {
                sample(rng, &rep.sub, out);
            }
        }
        HirKind::Capture(cap) => sample(rng, &cap.sub, out),
        HirKind::Concat(parts) => parts.iter().for_each(|p| sample(rng, p, out)),
        HirKind::Alternation(alts) => {
            let alt = &alts[rng.below(alts.len())];
            sample(rng, alt, out)
        }
    }
}

#[test]
fn generated_provider_secrets() {
    let set = one(Kind::ProviderSecret);
    let mut rng = Rng(0x5EED_0004);
    for (name, pattern) in catalog::patterns() {
        let hir = regex_syntax::parse(pattern).expect("catalog pattern parses");
        for _ in 0..60 {
            let mut token = String::new();
            sample(&mut rng, &hir, &mut token);
            // Webhook URLs report their secret path only.
            let want = match token.find(".com/") {
                Some(i) if name.ends_with("webhook") => {
                    let path = &token[i + 5..];
                    path.strip_prefix("api/webhooks/")
                        .or_else(|| path.strip_prefix("webhookb2/"))
                        .unwrap_or(path)
                        .to_string()
                }
                _ => token.clone(),
            };
            // Not a sentence's full stop: some alphabets hold `.`, and a token may end in one.
            let after = rng.pick(AFTER);
            let after = if *after == "." { " " } else { after };
            let text = format!("{}{token}{after}", rng.pick(BEFORE));
            assert_eq!(found(&set, &text), vec![want], "{name}: {text:?}");
            // Glued to a word on the left, it is part of something else.
            if !token.starts_with(['.', '-', '_', ':']) && !name.ends_with("webhook") {
                assert_none(&set, &format!("x{token}"));
            }
        }
    }
    for _ in 0..5000 {
        let text = common_look_alike(&mut rng);
        assert_none(&set, &text);
    }
}

#[test]
fn generated_international_phones() {
    use phonenumber::Mode;
    let set = one(Kind::PhoneIntl);
    let mut rng = Rng(0x5EED_0005);
    let mut planted = 0;
    for meta in phonenumber::metadata::DATABASE.iter() {
        let Ok(region) = meta.id().parse::<phone::Region>() else {
            continue;
        };
        let descriptors = meta.descriptors();
        for example in [descriptors.mobile(), descriptors.fixed_line()]
            .into_iter()
            .flatten()
            .filter_map(|d| d.example())
        {
            // The example with its last digits changed, kept when the metadata says it is still valid.
            let mut digits: Vec<u8> = example.bytes().collect();
            let n = digits.len();
            for d in digits.iter_mut().skip(n.saturating_sub(3)) {
                *d = b'0' + rng.below(10) as u8;
            }
            let national = String::from_utf8(digits).expect("digits");
            let Ok(number) = phonenumber::parse(Some(region), &national) else {
                continue;
            };
            if !phonenumber::is_valid(&number) {
                continue;
            }
            for mode in [Mode::International, Mode::E164] {
                let text = number.format().mode(mode).to_string();
                let digit_count = text.bytes().filter(u8::is_ascii_digit).count();
                if digit_count < 8 {
                    continue; // shorter than any candidate: tiny territories' numbers are not looked for
                }
                planted += 1;
                let shown = format!("{}{text}{}", rng.pick(&BEFORE[..BEFORE.len() - 1]), rng.pick(AFTER));
                assert_eq!(found(&set, &shown), vec![text.clone()], "{} in {shown:?}", meta.id());
            }
        }
    }
    assert!(planted > 300, "only {planted} numbers planted");
    for _ in 0..5000 {
        let text = match rng.below(6) {
            0 => format!(
                "{}.{}",
                1_700_000_000 + rng.below(100_000_000),
                rng.chars(b"0123456789", 6)
            ),
            1 => format!("{}e+{}", rng.below(1000), rng.below(30)),
            2 => format!(
                "ISBN 978-{}-{}-{}-{}",
                rng.below(10),
                rng.chars(b"0123456789", 3),
                rng.chars(b"0123456789", 5),
                rng.below(10)
            ),
            3 => format!(
                "order {}-{}-{}",
                rng.chars(b"0123456789", 3),
                rng.chars(b"0123456789", 3),
                rng.chars(b"0123456789", 4)
            ),
            4 => format!(
                "UTC+{:02}:{:02} at {}",
                rng.below(14),
                rng.below(60),
                rng.chars(b"0123456789", 13)
            ),
            _ => common_look_alike(&mut rng),
        };
        assert_none(&set, &text);
    }
}
