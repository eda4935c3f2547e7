//! Public IPv6 addresses in free text, with the IPv4 detector's policy: addresses that name a person's machine go,
//! addresses that name infrastructure or nothing stay.
//!
//! Public means global unicast (`2000::/3`) outside the documentation ranges (`2001:db8::/32`, `3fff::/20`), or an
//! IPv4-mapped/-translated address (`::ffff:a.b.c.d`, `64:ff9b::a.b.c.d`) whose IPv4 part is public. Loopback,
//! unspecified, link-local, unique-local (ULA) and multicast addresses are kept. Requiring the first group to be
//! four hex digits starting with 2 or 3 is what keeps `std::vector`, `a::b` paths, MAC addresses and clock times
//! from ever being parsed.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::is_word_byte;

/// The longest text form: eight groups of four plus seven colons, or six groups and a dotted IPv4 (45 bytes).
const MAX_LEN: usize = 45;

/// Calls `push(start, end)` for every public IPv6 address in `bytes`. A zone (`%eth0`) and a port after brackets
/// stay outside the match.
pub fn find(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
    let mut from = 0;
    for colon in memchr::memchr_iter(b':', bytes) {
        if colon < from {
            continue;
        }
        // The run of address bytes around this colon.
        let mut start = colon;
        while start > 0 && is_addr_byte(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = colon;
        while end < bytes.len() && is_addr_byte(bytes[end]) {
            end += 1;
        }
        from = end;
        // Whole tokens only: `std::vector`, `Foo::Bar`, `x2001:db8::1` are not addresses.
        if start > 0 && is_word_byte(bytes[start - 1]) || bytes.get(end).copied().is_some_and(is_word_byte) {
            continue;
        }
        // A sentence may end right after an address; an IPv4 tail may not end with a dot.
        while end > start && bytes[end - 1] == b'.' {
            end -= 1;
        }
        if end - start > MAX_LEN || end - start < 3 {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&bytes[start..end]) else {
            continue;
        };
        if !plausible(text) {
            continue;
        }
        if let Ok(addr) = text.parse::<Ipv6Addr>()
            && is_public(addr)
        {
            push(start, end);
        }
    }
}

/// Hex digits, colons, and dots (an IPv4 tail).
fn is_addr_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b':' || b == b'.'
}

/// Cheap shape checks before parsing: at least two colons, and a first group that can be public (`2xxx:`/`3xxx:`
/// with four digits) or an IPv4-mapped/-translated prefix.
fn plausible(text: &str) -> bool {
    let b = text.as_bytes();
    let colons = b.iter().filter(|&&c| c == b':').count();
    if colons < 2 {
        return false;
    }
    let global = b.len() > 5 && matches!(b[0], b'2' | b'3') && b[..4].iter().all(u8::is_ascii_hexdigit) && b[4] == b':';
    global || text.contains('.') && (starts_with_ci(b, b"::ffff:") || starts_with_ci(b, b"64:ff9b::"))
}

fn starts_with_ci(b: &[u8], prefix: &[u8]) -> bool {
    b.len() >= prefix.len() && b[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Whether an address names a machine on the public internet (see the module docs).
pub fn is_public(addr: Ipv6Addr) -> bool {
    let s = addr.segments();
    if let Some(v4) = embedded_ipv4(addr) {
        return is_public_ipv4(v4);
    }
    let global_unicast = s[0] & 0xe000 == 0x2000;
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || (s[0] & 0xfff0) == 0x3ff0;
    global_unicast && !documentation
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`) or NAT64 (`64:ff9b::/96`) address.
fn embedded_ipv4(addr: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = addr.segments();
    let mapped = s[..5] == [0; 5] && s[5] == 0xffff;
    let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    (mapped || nat64).then(|| {
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// The IPv4 detector's policy, on a parsed address.
fn is_public_ipv4(v4: Ipv4Addr) -> bool {
    !super::is_non_public_ipv4(&v4.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find(text.as_bytes(), &mut |s, e| out.push(&text[s..e]));
        out
    }

    #[test]
    fn public_addresses_in_every_form() {
        for (text, want) in [
            ("client 2a00:1450:4001:82b::200e connected", "2a00:1450:4001:82b::200e"),
            (
                "from 2606:4700:4700:0000:0000:0000:0000:1111.",
                "2606:4700:4700:0000:0000:0000:0000:1111",
            ),
            ("[2a02:26f0:fe::5]:443", "2a02:26f0:fe::5"),
            ("ip=2A00:1450:4001:82B::200E&x=1", "2A00:1450:4001:82B::200E"),
            ("mapped ::ffff:198.51.100.23 here", "::ffff:198.51.100.23"),
            ("mapped ::ffff:8.8.4.4", "::ffff:8.8.4.4"),
            ("nat64 64:ff9b::8.8.8.8", "64:ff9b::8.8.8.8"),
            ("\"2001:4860:4860::8888\"", "2001:4860:4860::8888"),
            ("2a01:4f8:c17:2b5c::1%eth0", "2a01:4f8:c17:2b5c::1"),
        ] {
            assert_eq!(found(text), vec![want], "in {text:?}");
        }
    }

    #[test]
    fn keeps_infrastructure_and_look_alikes() {
        for text in [
            "2001:db8::1",
            "2001:0db8:85a3::8a2e:0370:7334",
            "3fff:1234::1",
            "::1",
            "::",
            "fe80::1ff:fe23:4567:890a%eth0",
            "fd12:3456:789a:1::1",
            "fc00::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "std::vector<int>",
            "Foo::Bar::baz",
            "cafe::bad",
            "22:26:34",
            "2026-11-22T22:26:34Z",
            "00:1a:2b:3c:4d:5e",
            "x2001:4860:4860::8888",
            "2001:4860:4860::8888x",
            "2001:4860",
            "1:2:3:4:5:6:7:8",
            "sha256:2abc:def0",
        ] {
            assert!(found(text).is_empty(), "{text:?} gave {:?}", found(text));
        }
    }
}
