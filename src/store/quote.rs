//! Quoting shared by PostgreSQL's text forms: a libpq connection string's
//! values (`'…'`, see [`crate::embedded::conninfo_value`]) and the elements
//! of a `text[]` literal (`"…"`, see `append::args`).

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
