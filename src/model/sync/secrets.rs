//! Keeping passwords out of what edgesync shows: errors, log lines and
//! views may echo a conninfo.

/// Mask the value of every `password` setting in a text that may echo a
/// conninfo (an error message, a log line): `password=***`, and the
/// password of a URI's user info: `postgresql://user:***@host`.
pub fn redact_secrets(text: &str) -> String {
    redact_keyword_passwords(&redact_uri_passwords(text))
}

fn redact_uri_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        // user info ends at '@', before any '/', '?', '#' or white space
        let authority_end = tail.find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace()).unwrap_or(tail.len());
        let authority = &tail[..authority_end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at_sign), Some(colon)) if colon < at_sign => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("***");
                out.push_str(&authority[at_sign..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[authority_end..];
    }
    out.push_str(rest);
    out
}

fn redact_keyword_passwords(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find("password") {
        let key_end = pos + found + "password".len();
        let rest = &text[key_end..];
        let after_space = rest.len() - rest.trim_start().len();
        if !rest[after_space..].starts_with('=') {
            out.push_str(&text[pos..key_end]);
            pos = key_end;
            continue;
        }
        let value_start = key_end + after_space + 1;
        let value = &text[value_start..];
        let value = &value[value.len() - value.trim_start().len()..];
        let skip = value_start + (text.len() - value_start - value.len());
        let len = if let Some(quoted) = value.strip_prefix('\'') {
            let mut n = 1;
            let mut chars = quoted.char_indices();
            while let Some((i, c)) = chars.next() {
                if c == '\\' {
                    chars.next();
                } else if c == '\'' {
                    n = i + 2;
                    break;
                }
                n = i + 1 + c.len_utf8();
            }
            n
        } else {
            value.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(value.len())
        };
        out.push_str(&text[pos..key_end]);
        out.push_str("=***");
        pos = skip + len;
    }
    out.push_str(&text[pos..]);
    out
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
        for s in ["password=", "password='unterminated", "password =", "x password"] {
            assert!(!redact_secrets(s).contains("unterminated"), "{s}");
        }
    }
}
