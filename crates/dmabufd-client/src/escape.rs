//! The one place untrusted strings are made safe for text output.
//!
//! Process names (`comm`: 15 bytes any process may set) and buffer names
//! (any holder may rename a buffer) are chosen by apps. Printed raw, a
//! newline in one forges lines of a dump, a carriage return overwrites a
//! line on a terminal, an escape sequence drives the terminal. Every text
//! view (the dump, its CSV form, `dmabufctl report`) passes such strings
//! through [`escape`]; CSV cells are then quoted by [`csv_cell`].

use std::borrow::Cow;

/// C-style escapes for what could break a line or a terminal: `\n`, `\r`,
/// `\t`, `\\`, other control characters (C0, DEL, C1) as `\xNN`, and the
/// Unicode line/paragraph separators as `\u{2028}`/`\u{2029}`. Everything
/// else is kept, so ordinary names print unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            // Control characters are all below U+00A0.
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{2028}' | '\u{2029}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\' || c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// One CSV cell (RFC 4180) from a raw string: [`escape`]d, so a record
/// stays on one line, then [`csv_quote`]d.
pub fn csv_cell(c: &str) -> String {
    csv_quote(&escape(c))
}

/// RFC 4180 quoting of an already [`escape`]d cell: in double quotes, with
/// quotes doubled, when it holds a comma or a quote.
pub fn csv_quote(escaped: &str) -> String {
    debug_assert!(!escaped.contains(['\n', '\r']), "not escaped: {escaped:?}");
    if escaped.contains([',', '"']) {
        format!("\"{}\"", escaped.replace('"', "\"\""))
    } else {
        escaped.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_backslash_become_c_escapes() {
        assert_eq!(escape("camera"), "camera");
        assert!(matches!(escape("cam-preview 1"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nPID 1 x"), "a\\nPID 1 x");
        assert_eq!(escape("x\nino:\t1\r\n"), "x\\nino:\\t1\\r\\n");
        assert_eq!(
            escape("a\\nb"),
            "a\\\\nb",
            "a literal backslash stays distinct"
        );
        assert_eq!(escape("\x1b[2J\0\x7f"), "\\x1b[2J\\x00\\x7f");
        assert_eq!(escape("\u{85}é\u{2028}"), "\\x85é\\u{2028}");
    }

    #[test]
    fn csv_cells_are_quoted_and_stay_on_one_line() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b\"c"), "\"a,b\"\"c\"");
        assert_eq!(csv_cell("x\r\n,y"), "\"x\\r\\n,y\"");
        assert!(!csv_cell("\n\r").contains(['\n', '\r']));
    }
}
