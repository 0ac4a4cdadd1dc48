//! Quoting shared by PostgreSQL's text forms: a libpq connection string's
//! values (`'…'`, see [`crate::embedded::conninfo_value`]) and the elements
//! of a `text[]` literal (`"…"`, [`array_literal`]: the batch append's and
//! the import's lists inside lists).

/// Pushes `value` onto `out` between two `quote`s, with `quote` and `\`
/// escaped by a backslash inside.
#[inline]
pub(crate) fn push_quoted(out: &mut String, value: &str, quote: char) {
    out.push(quote);
    for c in value.chars() {
        if c == quote || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push(quote);
}

/// A PostgreSQL array literal of `items` (`{"a","b\"c"}`), read back by a
/// `::text[]` cast: every element quoted, `"` and `\` escaped. Lists inside
/// lists travel this way, so the function reads each argument in one pass.
pub(crate) fn array_literal(items: &[String]) -> String {
    let mut literal = String::with_capacity(2 + items.iter().map(|i| i.len() + 3).sum::<usize>());
    literal.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            literal.push(',');
        }
        push_quoted(&mut literal, item, '"');
    }
    literal.push('}');
    literal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_every_element_and_escape_quotes_and_backslashes() {
        let items = ["a", "q\"uote", "back\\slash", "c,o{m}ma", ""].map(String::from);
        assert_eq!(
            array_literal(&items),
            r#"{"a","q\"uote","back\\slash","c,o{m}ma",""}"#
        );
        assert_eq!(array_literal(&[]), "{}");
    }
}
