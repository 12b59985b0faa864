//! Text from outside the daemon, made safe to show: provider-supplied
//! strings (status detail, error messages, log lines) and caller-supplied
//! ones (uids, key ids). Every such string is cut to a length and loses its
//! control characters before it reaches a log line, Status, the admin view
//! or the apiserver, so nobody can forge log lines, flood the log or grow
//! the daemon's memory with it.

use std::fmt;

/// Longest status detail kept from a provider.
pub const MAX_DETAIL: usize = 256;
/// Longest error message kept from a provider.
pub const MAX_MESSAGE: usize = 512;
/// Longest log line kept from a provider.
pub const MAX_LOG_LINE: usize = 1024;
/// Longest caller-supplied string (uid, key id) shown in a log line.
pub const MAX_LOGGED_INPUT: usize = 128;

/// Characters that can make a line look like something else: control
/// characters (newlines, escape sequences), Unicode line and paragraph
/// separators, and the marks that reorder text (bidi overrides).
fn deceptive(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
                | '\u{061C}'
                | '\u{FEFF}'
        )
}

/// `text` without [`deceptive`] characters (newlines included), cut to at
/// most `max` characters; a cut is marked with `…`.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for (count, c) in text.chars().filter(|c| !deceptive(*c)).enumerate() {
        if count == max {
            out.push('…');
            break;
        }
        out.push(c);
    }
    out
}

/// Shows caller input in a log line: escaped (`\n`, `\u{1b}`), cut to
/// [`MAX_LOGGED_INPUT`] characters. Costs nothing unless formatted.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (count, c) in self.0.chars().enumerate() {
            if count == MAX_LOGGED_INPUT {
                return f.write_str("…");
            }
            if deceptive(c) && !c.is_control() {
                fmt::Display::fmt(&c.escape_unicode(), f)?;
            } else {
                fmt::Display::fmt(&c.escape_debug(), f)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_go_and_length_is_capped() {
        assert_eq!(clean("a\nb\u{1b}[31mc\r\t", 100), "ab[31mc");
        assert_eq!(clean("x\u{2028}y\u{202E}z", 100), "xyz");
        assert_eq!(clean(&"é".repeat(10), 3), "ééé…");
        assert_eq!(clean("short", 5), "short");
    }

    #[test]
    fn escaped_input_cannot_start_a_new_line() {
        let shown = Escaped("u1\n2026-01-01 INFO forged").to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("u1\\n"), "{shown}");
        let shown = Escaped("a\u{2028}b\u{202E}").to_string();
        assert_eq!(shown, "a\\u{2028}b\\u{202e}");
        let long = Escaped(&"x".repeat(10_000)).to_string();
        assert_eq!(long.chars().count(), MAX_LOGGED_INPUT + 1);
    }
}
