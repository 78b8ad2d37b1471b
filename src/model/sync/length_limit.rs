//! Which column refused a value. PostgreSQL's message for a value too long
//! for its column names the type (`value too long for type character
//! varying(5)`), not the column; apply looks for the value beyond the
//! length its column's type allows, to name the column.

/// The length a column's type modifier allows a value's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LengthLimit {
    /// At most this many characters (`varchar(n)`, `char(n)`); spaces past
    /// the limit are dropped, not refused, as the SQL standard says.
    Chars(usize),
    /// Exactly this many bits (`bit(n)`).
    BitsExactly(usize),
    /// At most this many bits (`bit varying(n)`).
    Bits(usize),
}

impl LengthLimit {
    /// Would a column under this limit refuse `text`, as its type prints it?
    pub fn refuses(self, text: &str) -> bool {
        match self {
            LengthLimit::Chars(n) => text.trim_end_matches(' ').chars().count() > n,
            // a bit string prints as one ASCII digit per bit
            LengthLimit::BitsExactly(n) => text.len() != n,
            LengthLimit::Bits(n) => text.len() > n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LengthLimit::*;

    #[test]
    fn characters_are_counted_not_bytes() {
        assert!(!Chars(5).refuses("héllo"));
        assert!(Chars(5).refuses("héllo!"));
        assert!(!Chars(5).refuses(""));
    }

    #[test]
    fn trailing_spaces_past_the_limit_are_not_refused() {
        assert!(!Chars(3).refuses("abc   "));
        assert!(Chars(3).refuses("ab c "));
    }

    #[test]
    fn bit_strings() {
        assert!(!BitsExactly(4).refuses("1010"));
        assert!(BitsExactly(4).refuses("101"));
        assert!(BitsExactly(4).refuses("10101"));
        assert!(!Bits(4).refuses("101"));
        assert!(Bits(4).refuses("10101"));
    }
}
