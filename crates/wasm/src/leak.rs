//! Finds a provider's credentials in what would be handed to it.
//!
//! The host attaches credentials to a provider's requests so the provider
//! never holds them. A provider could still ask a backend to send one back:
//! Vault's `auth/token/lookup-self` answers with the token itself, and a
//! server that echoes request headers answers with anything. So every
//! response is searched for every credential of the provider before the
//! guest sees it, in each form a server could plausibly return it in
//! (the guest cannot ask for compression or byte ranges: the host owns
//! those headers, see `outbound.rs`):
//!
//! - as is, and ignoring ASCII case;
//! - JSON-escaped (`\u003c` or `\u003C`, `\/`, `\"`), and percent-encoded
//!   (`%2F` or `%2f`);
//! - hex, lower and upper case;
//! - base64, standard and URL-safe alphabets, at each of the three byte
//!   offsets it can start at inside a larger encoded blob (only the
//!   characters that depend on the credential alone are searched, so it is
//!   found whatever surrounds it);
//! - each of those also in a copy of the response with line breaks and
//!   JSON escapes undone (`\n`, `\/`, `\u00XX`): MIME-wrapped base64, or a
//!   base64 blob inside a JSON string.
//!
//! A credential written with an HTTP scheme (`Bearer X`, `Basic B64`) is
//! also searched for without it (`X`), and a `Basic` one also decoded
//! (`user:password`, and the password alone).
//!
//! Encoded forms shorter than [`MIN_NEEDLE`] are skipped: they would match
//! by chance. The credential itself is always searched for (exactly and
//! case-blind); a short one is not in every encoding (hex from 4 bytes,
//! base64 from 6).
//! What no search catches: a backend that transforms a credential some
//! other way (reversed, hashed, encrypted) before sending it back; that is
//! why a secret goes only to the hosts and headers allowed for it. A
//! credential is found or not; nothing is rewritten.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use memchr::memmem::Finder;

/// Encoded forms shorter than this are not searched for.
const MIN_NEEDLE: usize = 8;

/// A credential shorter than this is warned about when a provider loads:
/// searched for in every response, it is found there by chance often
/// enough to withhold answers that never held it.
pub const SHORT_CREDENTIAL: usize = 16;

/// The credentials of one provider, in every form searched for.
pub struct LeakDetector {
    /// (credential name, one of its forms).
    needles: Vec<(String, Finder<'static>)>,
    /// (credential name, lower-cased credential), for the case-blind search.
    folded: Vec<(String, Finder<'static>)>,
}

impl LeakDetector {
    /// `credentials`: (name, value) pairs.
    pub fn new<'a>(credentials: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> LeakDetector {
        let mut needles = Vec::new();
        let mut folded = Vec::new();
        for (name, credential) in credentials {
            for value in parts(credential) {
                if value.is_empty() {
                    continue;
                }
                for form in forms(&value) {
                    if form == value || form.len() >= MIN_NEEDLE {
                        needles.push((name.to_owned(), Finder::new(&form).into_owned()));
                    }
                }
                folded.push((
                    name.to_owned(),
                    Finder::new(&value.to_ascii_lowercase()).into_owned(),
                ));
            }
        }
        LeakDetector { needles, folded }
    }

    /// The name of a credential found in any of `haystacks`, if one is.
    pub fn find(&self, haystacks: &[&[u8]]) -> Option<&str> {
        if self.folded.is_empty() {
            return None;
        }
        let unwrapped: Vec<Vec<u8>> = haystacks.iter().map(|h| unescape(h)).collect();
        let all = haystacks
            .iter()
            .copied()
            .chain(unwrapped.iter().map(Vec::as_slice));
        for haystack in all {
            if let Some((name, _)) = self
                .needles
                .iter()
                .find(|(_, needle)| needle.find(haystack).is_some())
            {
                return Some(name);
            }
            let lower = haystack.to_ascii_lowercase();
            if let Some((name, _)) = self
                .folded
                .iter()
                .find(|(_, needle)| needle.find(&lower).is_some())
            {
                return Some(name);
            }
        }
        None
    }
}

/// The credential, and what a server might hold of it on its own: the
/// part after an HTTP scheme, and a `Basic` credential decoded.
fn parts(credential: &[u8]) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let mut parts = vec![credential.to_vec()];
    let text = String::from_utf8_lossy(credential);
    if let Some((scheme, rest)) = text.split_once(' ')
        && !scheme.is_empty()
        && scheme.bytes().all(|b| b.is_ascii_alphabetic())
    {
        let rest = rest.trim();
        parts.push(rest.as_bytes().to_vec());
        if scheme.eq_ignore_ascii_case("basic")
            && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest)
        {
            if let Some(colon) = decoded.iter().position(|&b| b == b':') {
                parts.push(decoded[colon + 1..].to_vec());
            }
            parts.push(decoded);
        }
    }
    parts
}

/// A copy of `haystack` with line breaks dropped and JSON escapes undone
/// (`\n`, `\r`, `\t` dropped too, `\/` and `\uXXXX` for ASCII decoded).
fn unescape(haystack: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        let byte = haystack[i];
        if byte == b'\\' && i + 1 < haystack.len() {
            match haystack[i + 1] {
                b'n' | b'r' | b't' => {
                    i += 2;
                    continue;
                }
                b'/' | b'"' | b'\\' => {
                    out.push(haystack[i + 1]);
                    i += 2;
                    continue;
                }
                b'u' if i + 6 <= haystack.len() => {
                    let code = std::str::from_utf8(&haystack[i + 2..i + 6])
                        .ok()
                        .and_then(|hex| {
                            u8::from_str_radix(hex.get(2..)?, 16)
                                .ok()
                                .filter(|_| hex.starts_with("00"))
                        });
                    if let Some(code) = code {
                        out.push(code);
                        i += 6;
                        continue;
                    }
                }
                _ => {}
            }
        }
        if !matches!(byte, b'\r' | b'\n' | b' ' | b'\t') {
            out.push(byte);
        }
        i += 1;
    }
    out
}

/// Every form of `value` searched for (duplicates included; harmless).
fn forms(value: &[u8]) -> Vec<Vec<u8>> {
    let mut forms = vec![value.to_vec()];
    for upper in [true, false] {
        forms.push(percent_encoded(value, upper));
        for html_safe in [false, true] {
            for slash in [false, true] {
                forms.push(json_escaped(value, html_safe, slash, upper));
            }
        }
    }
    forms.push(hex::encode(value).into_bytes());
    forms.push(hex::encode_upper(value).into_bytes());
    for engine in [STANDARD_NO_PAD, URL_SAFE_NO_PAD] {
        for offset in 0..3 {
            forms.push(base64_core(&engine, value, offset));
        }
    }
    forms
}

/// The base64 characters that encode `value` alone when it starts `offset`
/// bytes into a 3-byte group: the characters shared with the prefix or
/// the suffix are dropped.
fn base64_core(engine: &impl base64::Engine, value: &[u8], offset: usize) -> Vec<u8> {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(value);
    let encoded = engine.encode(&padded).into_bytes();
    // Characters fully inside the prefix or sharing bits with it: the
    // prefix's bits end at offset*8, so the first character free of them
    // starts at the next multiple of 6.
    let skip = (offset * 8).div_ceil(6);
    // Characters fully inside the value: its bits end at (offset+len)*8.
    let end = ((offset + value.len()) * 8) / 6;
    encoded
        .get(skip..end)
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

/// As a JSON string would carry it. Encoders differ: all escape `"`, `\`
/// and control characters; Go's also `<`, `>` and `&` (`html_safe`); some
/// also `/` (`slash`).
fn json_escaped(value: &[u8], html_safe: bool, slash: bool, upper: bool) -> Vec<u8> {
    let unicode = |byte: u8| {
        if upper {
            format!("\\u{byte:04X}")
        } else {
            format!("\\u{byte:04x}")
        }
    };
    let mut out = Vec::with_capacity(value.len());
    for &byte in value {
        match byte {
            b'"' => out.extend_from_slice(br#"\""#),
            b'\\' => out.extend_from_slice(br"\\"),
            b'/' if slash => out.extend_from_slice(br"\/"),
            b'\n' => out.extend_from_slice(br"\n"),
            b'\r' => out.extend_from_slice(br"\r"),
            b'\t' => out.extend_from_slice(br"\t"),
            b'<' | b'>' | b'&' if html_safe => out.extend_from_slice(unicode(byte).as_bytes()),
            0..=0x1f => out.extend_from_slice(unicode(byte).as_bytes()),
            _ => out.push(byte),
        }
    }
    out
}

/// Every byte outside RFC 3986's unreserved set as `%XX` (or `%xx`).
fn percent_encoded(value: &[u8], upper: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    for &byte in value {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte);
        } else if upper {
            out.extend_from_slice(format!("%{byte:02X}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{byte:02x}").as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use rstest::rstest;

    use super::*;

    const TOKEN: &str = "hvs.CAESI/Tok+en<&>\"x";

    fn detector() -> LeakDetector {
        LeakDetector::new([("token", TOKEN.as_bytes())])
    }

    fn found(haystack: &[u8]) -> bool {
        detector().find(&[haystack]).is_some()
    }

    #[rstest]
    #[case::raw(format!("{{\"id\":\"{TOKEN}\"}}").into_bytes())]
    #[case::upper_case(TOKEN.to_uppercase().into_bytes())]
    #[case::hex(hex::encode(format!("x{TOKEN}y")).into_bytes())]
    #[case::hex_upper(hex::encode_upper(TOKEN).into_bytes())]
    #[case::json(serde_json::to_vec(&serde_json::json!({"data": {"id": TOKEN}})).unwrap())]
    #[case::json_slash(br#"{"id":"hvs.CAESI\/Tok+en\u003c\u0026\u003e\"x"}"#.to_vec())]
    #[case::json_upper(br#"{"id":"hvs.CAESI/Tok+en\u003C\u0026\u003E\"x"}"#.to_vec())]
    #[case::percent(b"q=hvs.CAESI%2FTok%2Ben%3C%26%3E%22x".to_vec())]
    #[case::percent_lower(b"q=hvs.CAESI%2fTok%2ben%3c%26%3e%22x".to_vec())]
    #[case::base64_wrapped({
        let encoded = STANDARD.encode(format!("padding {TOKEN} padding"));
        let (a, b) = encoded.split_at(20);
        format!("{a}\r\n{b}").into_bytes()
    })]
    #[case::base64_in_json(serde_json::to_vec(&serde_json::json!({
        "blob": STANDARD.encode(format!("x{TOKEN}")).replace('/', "\\/"),
    })).unwrap())]
    #[case::base64_offset_0(STANDARD.encode(TOKEN).into_bytes())]
    #[case::base64_offset_1(STANDARD.encode(format!("a{TOKEN}")).into_bytes())]
    #[case::base64_offset_2(STANDARD.encode(format!("ab{TOKEN}b")).into_bytes())]
    #[case::base64url_in_a_blob(URL_SAFE.encode(format!("{{\"header\":\"{TOKEN}\"}}")).into_bytes())]
    fn every_form_is_found(#[case] haystack: Vec<u8>) {
        assert!(found(&haystack), "{}", String::from_utf8_lossy(&haystack));
    }

    #[rstest]
    #[case::nothing(b"{\"data\":{\"ciphertext\":\"vault:v1:abc\"}}".to_vec())]
    #[case::a_prefix_only(b"hvs.CAESI/Tok".to_vec())]
    #[case::another_token(STANDARD.encode("hvs.OTHER/Token+value").into_bytes())]
    fn other_text_is_not(#[case] haystack: Vec<u8>) {
        assert!(!found(&haystack), "{}", String::from_utf8_lossy(&haystack));
    }

    #[test]
    fn a_credential_with_a_scheme_is_found_without_it() {
        let bearer = LeakDetector::new([("token", &b"Bearer abcdef0123456789"[..])]);
        assert!(bearer.find(&[b"{\"id\":\"abcdef0123456789\"}"]).is_some());
        let basic = STANDARD.encode("admin:s3cret-password");
        let header = format!("Basic {basic}");
        let basic = LeakDetector::new([("login", header.as_bytes())]);
        assert!(basic.find(&[b"user admin:s3cret-password"]).is_some());
        assert!(basic.find(&[b"password=s3cret-password"]).is_some());
    }

    #[test]
    fn headers_are_searched_too_and_the_credential_is_named() {
        let detector = LeakDetector::new([("a", &b"first-secret"[..]), ("b", b"second-secret")]);
        assert_eq!(
            detector.find(&[b"nothing here", b"x-echo: second-secret"]),
            Some("b")
        );
    }

    #[test]
    fn the_base64_core_is_exactly_the_characters_the_value_decides() {
        for offset in 0..3 {
            let core = base64_core(&STANDARD_NO_PAD, b"credential", offset);
            for prefix in ["", "x", "xy", "xyz"] {
                for suffix in ["", "1", "12"] {
                    let blob = STANDARD.encode(format!("{prefix}credential{suffix}"));
                    if prefix.len() % 3 == offset {
                        assert!(
                            Finder::new(&core).find(blob.as_bytes()).is_some(),
                            "offset {offset}, {prefix:?} {suffix:?}"
                        );
                    }
                }
            }
        }
    }
}
