//! Keeping passwords out of what edgesync shows: errors, log lines and
//! views may echo a conninfo.

/// Mask the value of every `password` setting in a text that may echo a
/// conninfo (an error message, a log line): `password=***`, and the
/// password of a URI's user info: `postgresql://user:***@host`.
pub fn redact_secrets(text: &str) -> String {
    let text = mask_spans(text, &uri_password_spans(text), "***");
    mask_spans(&text, &keyword_password_spans(&text), "=***")
}

/// `redact_secrets`, and besides every password that `conninfo` carries
/// masked wherever it stands in `text`: libpq quotes parts of a conninfo it
/// cannot read back without saying what they are (`invalid
/// percent-encoded token: "s3cret%zz"`).
pub fn redact_secrets_of(text: &str, conninfo: &str) -> String {
    let mut out = text.to_string();
    for password in passwords_in(conninfo) {
        out = out.replace(&password, "***");
    }
    redact_secrets(&out)
}

/// The passwords written in a conninfo (keyword values, with and without
/// their quotes, and URI user-info passwords, a URI inside `dbname` too),
/// longest first so that a password containing another is masked whole.
fn passwords_in(conninfo: &str) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for span in uri_password_spans(conninfo) {
        found.push(conninfo[span].to_string());
    }
    for span in keyword_password_spans(conninfo) {
        // the span starts right after the keyword: spaces, '=', spaces, the value
        let value = conninfo[span].trim_start().trim_start_matches('=').trim_start();
        found.push(value.to_string());
        if let Some(inner) = value.strip_prefix('\'').map(|v| v.strip_suffix('\'').unwrap_or(v)) {
            found.push(inner.to_string());
            found.push(inner.replace("\\'", "'").replace("\\\\", "\\"));
        }
    }
    found.retain(|p| !p.is_empty());
    found.sort_by_key(|p| std::cmp::Reverse(p.len()));
    found.dedup();
    found
}

/// `text` with each of `spans` (in order, not overlapping) replaced by `mask`.
fn mask_spans(text: &str, spans: &[std::ops::Range<usize>], mask: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for span in spans {
        out.push_str(&text[pos..span.start]);
        out.push_str(mask);
        pos = span.end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Where the password of each URI's user info (`scheme://user:PASSWORD@host`) stands.
fn uri_password_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("://") {
        let start = from + at + 3;
        let tail = &text[start..];
        // user info ends at '@', before any '/', '?', '#' or white space
        let authority_end = tail.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        if let (Some(at_sign), Some(colon)) = (authority.rfind('@'), authority.find(':')) {
            if colon < at_sign {
                spans.push(start + colon + 1..start + at_sign);
            }
        }
        from = start + authority_end;
    }
    spans
}

/// Where each `password = value` setting's part after the keyword stands
/// (value quoted or not; an unterminated quote runs to the end).
fn keyword_password_spans(text: &str) -> Vec<std::ops::Range<usize>> {
    let lower = text.to_ascii_lowercase();
    let mut spans = Vec::new();
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("password") {
        let key_end = pos + found + "password".len();
        let rest = &text[key_end..];
        let after_space = rest.len() - rest.trim_start().len();
        pos = key_end;
        if !rest[after_space..].starts_with('=') {
            continue;
        }
        let value_start = key_end + after_space + 1;
        let value = &text[value_start..];
        let leading = value.len() - value.trim_start().len();
        let value = &value[leading..];
        let len = match value.strip_prefix('\'') {
            Some(quoted) => quoted_len(quoted),
            None => value.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(value.len()),
        };
        let end = value_start + leading + len;
        spans.push(key_end..end);
        pos = end;
    }
    spans
}

/// The length of a single-quoted value whose opening quote was just read,
/// closing quote included (backslash escapes a character).
fn quoted_len(quoted: &str) -> usize {
    let mut n = 1;
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            // the escaped character is part of the value, the last one too
            '\\' => n = chars.next().map_or(i + 1 + c.len_utf8(), |(j, e)| j + 1 + e.len_utf8()),
            '\'' => return i + 2,
            _ => n = i + 1 + c.len_utf8(),
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(redact_secrets("host=a password=s3cret user=b"), "host=a password=*** user=b");
        assert_eq!(redact_secrets("host=a password = 's3 cr\\'et' user=b"), "host=a password=*** user=b");
        assert_eq!(redact_secrets("PASSWORD=x"), "PASSWORD=***");
        assert_eq!(redact_secrets("password authentication failed for user \"edge\""), "password authentication failed for user \"edge\"");
        assert_eq!(redact_secrets("no secrets"), "no secrets");
        assert_eq!(redact_secrets("postgresql://edge:s3cret@cloud:5432/iot?x=1"), "postgresql://edge:***@cloud:5432/iot?x=1");
        assert_eq!(redact_secrets("bad uri postgres://u:p%zz@h/db here"), "bad uri postgres://u:***@h/db here");
        assert_eq!(redact_secrets("postgresql://edge@cloud/iot"), "postgresql://edge@cloud/iot");
        assert_eq!(redact_secrets("password='ab\\'"), "password=***", "an escaped last character is masked too");
        for s in ["password=", "password='unterminated", "password =", "x password"] {
            assert!(!redact_secrets(s).contains("unterminated"), "{s}");
        }
    }

    #[test]
    fn user_info_ends_where_the_authority_does() {
        // an '@' after the host (path, query, fragment, the rest of a message) is no user info
        for text in [
            "postgresql://cloud:5432/iot@x",
            "postgresql://cloud:5432?user=a@b",
            "postgresql://cloud:5432#a@b",
            "could not connect to postgresql://cloud:5432 as edge@site",
        ] {
            assert_eq!(redact_secrets(text), text);
        }
    }

    #[test]
    fn an_unterminated_quoted_password_is_masked_to_the_end() {
        assert_eq!(redact_secrets("password='s3cret"), "password=***");
        assert_eq!(redact_secrets("password='pé"), "password=***");
        assert_eq!(redact_secrets("password = 'a b"), "password=***");
    }

    #[test]
    fn passwords_libpq_quotes_back_bare_are_masked_too() {
        let uri = "postgresql://edge:s3cret%zz@cloud/iot";
        assert_eq!(redact_secrets_of("invalid percent-encoded token: \"s3cret%zz\"", uri), "invalid percent-encoded token: \"***\"");
        let nested = "host=a dbname='postgresql://edge:pw%zz@cloud/iot'";
        assert_eq!(redact_secrets_of("invalid percent-encoded token: \"pw%zz\"", nested), "invalid percent-encoded token: \"***\"");
        let quoted = "host=a password='s3 cr\\'et'";
        assert_eq!(redact_secrets_of("libpq said: s3 cr'et", quoted), "libpq said: ***", "the unescaped value is masked too");
        assert_eq!(redact_secrets_of("host=a password=abc user=b", "password=abc"), "host=a password=*** user=b");
        assert_eq!(redact_secrets_of("nothing to hide", "host=a"), "nothing to hide");
    }
}
