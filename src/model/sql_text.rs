//! Quoting for SQL text that edgesync shows to a user to copy and run
//! (the `fix` column of `diagnose()`). Same rules as PostgreSQL's
//! `quote_ident` / `quote_literal`, except that identifiers are always
//! quoted.

/// Quote an identifier, always: a bare name is only safe when it is not a
/// keyword of the server that runs it, and this pure code has no server's
/// keyword list (a hand-kept one misses words such as `left` or `verbose`).
/// A quoted name means the same on every version.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quote a string literal as `quote_literal()` does (E'' form when it holds a backslash).
pub fn quote_literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(quote_ident("sub_a1"), "\"sub_a1\"");
        assert_eq!(quote_ident("Sub"), "\"Sub\"");
        assert_eq!(quote_ident("my sub"), "\"my sub\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_ident("left"), "\"left\"");
        assert_eq!(quote_ident("verbose"), "\"verbose\"");
        assert_eq!(quote_ident("1abc"), "\"1abc\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("slot"), "'slot'");
        assert_eq!(quote_literal("o'brien"), "'o''brien'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
