//! The user-name segment of home-directory paths (`/home/<u>/`, `/Users/<u>/`, `C:\Users\<u>\`, also with `/` or
//! JSON-escaped `\\` on Windows), Sentry's `@userpath`. Only that segment is a match: the rest of the path stays, so
//! stack traces, source context and symbolication keep working.
//!
//! A path must start a token: at the start of the string, after whitespace, a quote, a bracket, `=`, `,`, `;`,
//! `:`, `|`, or `file://`. So `https://example.com/home/jane/` (a URL path, not a home directory) stays.

/// Names under the home roots that belong to no person.
const SHARED: &[&str] = &["Shared", "Public", "Default", "Default User", "All Users", "Guest"];

/// Longest user segment looked at; longer ones are not user names.
const MAX_USER: usize = 64;

/// Calls `push(start, end)` for the user segment of every home-directory path in `bytes`.
pub fn find(bytes: &[u8], push: &mut dyn FnMut(usize, usize)) {
    let mut i = 0;
    while i < bytes.len() {
        // Every root starts with `/` or `\` (Unix) or a drive letter, and each contains a `/` or `\` before the user.
        let Some(offset) = memchr::memchr2(b'/', b'\\', &bytes[i..]) else {
            return;
        };
        let slash = i + offset;
        i = slash + 1;
        let Some(user_start) = root_end(bytes, slash) else {
            continue;
        };
        if let Some(user_end) = user_end(bytes, user_start) {
            let name = &bytes[user_start..user_end];
            if !SHARED.iter().any(|s| s.as_bytes().eq_ignore_ascii_case(name)) && !is_placeholder(name) {
                push(user_start, user_end);
            }
            i = user_end;
        }
    }
}

/// If a home root (`/home/`, `/Users/`, `X:\Users\`, `X:\Documents and Settings\`, with `/`, `\` or `\\`) starts
/// at the separator `slash`, where its user segment starts.
fn root_end(bytes: &[u8], slash: usize) -> Option<usize> {
    let sep = bytes[slash];
    let rest = &bytes[slash..];
    if sep == b'/' {
        for root in [b"/home/".as_slice(), b"/Users/"] {
            if rest.starts_with(root) && unix_start(bytes, slash) {
                return Some(slash + root.len());
            }
        }
    }
    // Windows: `C:` right before, then one or two backslashes (JSON-escaped text), or a forward slash.
    if slash < 2 || bytes[slash - 1] != b':' || !bytes[slash - 2].is_ascii_alphabetic() {
        return None;
    }
    // A drive letter right after a word byte is part of the word (`abc:/Users`), not a drive.
    if slash >= 3 && super::is_word_byte(bytes[slash - 3]) {
        return None;
    }
    let width = if sep == b'\\' && bytes.get(slash + 1) == Some(&b'\\') {
        2
    } else {
        1
    };
    let after = slash + width;
    for dir in [b"users".as_slice(), b"documents and settings"] {
        let end = after + dir.len();
        if bytes.len() >= end && bytes[after..end].eq_ignore_ascii_case(dir) {
            let tail = &bytes[end..];
            let sep_len = separator_len(tail, sep)?;
            return Some(end + sep_len);
        }
    }
    None
}

/// How many bytes the path separator at the start of `tail` takes (`/`, `\` or `\\`), if it is one.
fn separator_len(tail: &[u8], sep: u8) -> Option<usize> {
    match tail {
        [b'\\', b'\\', ..] if sep == b'\\' => Some(2),
        [b, ..] if *b == sep => Some(1),
        _ => None,
    }
}

/// Whether a Unix root at `slash` starts a path rather than continuing a word or a URL.
fn unix_start(bytes: &[u8], slash: usize) -> bool {
    if slash == 0 {
        return true;
    }
    if bytes[..slash].ends_with(b"file://") {
        return true;
    }
    let prev = bytes[slash - 1];
    prev.is_ascii_whitespace()
        || matches!(
            prev,
            b'"' | b'\'' | b'`' | b'(' | b'[' | b'{' | b'<' | b'=' | b',' | b';' | b':' | b'|' | b'@' | b'>'
        )
}

/// The end of the user segment starting at `start`: up to the next path separator. A name may hold single
/// spaces (`/Users/Jane Doe/`) when a separator follows; with no separator it ends at whitespace, a quote or the
/// end of the string (`HOME=/home/jane`).
fn user_end(bytes: &[u8], start: usize) -> Option<usize> {
    let limit = bytes.len().min(start + MAX_USER);
    let mut pos = start;
    while pos < limit {
        match bytes[pos] {
            b'/' | b'\\' => {
                // `jane and /tmp/x`: a space right before the separator means the name ended at the first space.
                if pos > start && bytes[pos - 1] != b' ' {
                    return Some(pos);
                }
                break;
            }
            b' ' if pos == start || bytes.get(pos + 1) == Some(&b' ') => break,
            b' ' => {}
            b if !is_name_byte(b) => break,
            _ => {}
        }
        pos += 1;
    }
    // No separator: the name is the first word, and it must end the path (whitespace, quote, end of string...).
    let mut end = start;
    while end < limit && is_name_byte(bytes[end]) {
        end += 1;
    }
    if end == start {
        return None;
    }
    match bytes.get(end) {
        None => Some(end),
        Some(b)
            if b.is_ascii_whitespace()
                || matches!(b, b'"' | b'\'' | b'`' | b')' | b']' | b'}' | b'>' | b',' | b';' | b'|') =>
        {
            Some(end)
        }
        _ => None,
    }
}

/// Bytes a user name can hold: letters, digits, `.`, `_`, `-`, `$`, `@`, `+`, and any non-ASCII (UTF-8 names).
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'$' | b'@' | b'+' | b'~') || b >= 0x80
}

/// Already scrubbed (`[user]`), a template (`<user>`, `{user}`, `$USER`, `%USERNAME%`), or `.`/`..`.
fn is_placeholder(name: &[u8]) -> bool {
    matches!(name.first(), Some(b'[' | b'<' | b'{' | b'$' | b'%' | b'*')) || name == b"." || name == b".."
}

/// Whether `bytes` may hold a home root: a cheap, vectorized test for `/ho`, `/us`, `\us`, `\do` (any case), which
/// every root holds. `\` lower-cased by `| 0x20` is `|`, so a `|us` also passes (a superset is fine).
pub fn maybe(bytes: &[u8]) -> bool {
    super::any_trigram(bytes, root_trigram)
}

/// `/ho`, `/us`, `/do` (and `\` for `/`, which lower-cases to `|`), as [`super::any_trigram`] passes them.
#[inline(always)]
pub(super) fn root_trigram(a: u8, b: u8, c: u8) -> bool {
    let slash = (a == b'/') | (a == b'|');
    slash & (((b == b'h') & (c == b'o')) | ((b == b'u') & (c == b's')) | ((b == b'd') & (c == b'o')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find(text.as_bytes(), &mut |s, e| out.push(&text[s..e]));
        out
    }

    #[test]
    fn finds_the_user_segment_only() {
        for (text, want) in [
            ("/home/jane/app/main.py", "jane"),
            ("File \"/home/jane.doe/venv/lib/site.py\", line 3", "jane.doe"),
            ("/Users/jdoe/Library/Caches", "jdoe"),
            ("C:\\Users\\JaneD\\AppData\\Local\\app.dll", "JaneD"),
            ("c:/users/janed/source/repos/App/Program.cs", "janed"),
            ("C:\\\\Users\\\\JaneD\\\\AppData", "JaneD"),
            ("/Users/Jane Doe/Documents/x.swift", "Jane Doe"),
            ("C:\\Users\\Jane Doe\\source\\x.cs", "Jane Doe"),
            ("HOME=/home/jane", "jane"),
            ("at file:///Users/jdoe/app/index.js:10:5", "jdoe"),
            ("cwd '/home/jane'", "jane"),
            ("C:\\Documents and Settings\\jane\\Desktop", "jane"),
            ("/home/jane and /tmp/x", "jane"),
            ("/home/josé/app.py", "josé"),
        ] {
            assert_eq!(users(text), vec![want], "in {text:?}");
        }
        assert_eq!(users("/home/a/x /Users/b/y"), ["a", "b"]);
    }

    #[test]
    fn keeps_what_is_not_a_home_directory() {
        for text in [
            "https://example.com/home/jane/profile",
            "/api/Users/42/orders",
            "/var/lib/home/x",
            "/Users/Shared/app.log",
            "C:\\Users\\Public\\Desktop",
            "/home/[user]/app.py",
            "/home/$USER/app.py",
            "C:\\Users\\%USERNAME%\\AppData",
            "/home/",
            "/homework/jane/",
            "abc:\\Users\\x",
            "/usr/lib/python3.11/site.py",
            "/home//x",
        ] {
            assert!(users(text).is_empty(), "{text:?} gave {:?}", users(text));
        }
    }

    #[test]
    fn maybe_is_true_for_every_root() {
        for text in [
            "/home/a",
            "/Users/a",
            "C:\\Users\\a",
            "C:\\\\USERS\\\\a",
            "C:\\Documents and Settings\\a",
        ] {
            assert!(maybe(text.as_bytes()), "{text:?}");
        }
        assert!(!maybe(b"User authenticated successfully"));
    }
}
