//! What user-written text may contain. Refused: control characters (a
//! multi-line text may have line breaks and tabs), the invisible
//! characters that change the direction text is shown in (bidi overrides
//! and isolates, as in "Trojan Source"), which let a title display as
//! something other than what it says, and every other format character
//! (Unicode category Cf: zero-width spaces, word joiners, the byte-order
//! mark, interlinear annotations, tag characters, the soft hyphen) and the
//! line and paragraph separators — except the zero-width joiner and
//! non-joiner, which emoji sequences and several scripts need. Text made
//! only of spaces and invisible characters (the joiners, the braille blank,
//! Hangul fillers, variation selectors) counts as empty.
//!
//! The rule is one per character, so a regular expression says it exactly:
//! [`one_line_pattern`] is the JSON Schema `pattern` the API description
//! gives for titles.

/// Why a text is refused, for the field's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfit {
    /// Nothing visible in it.
    Empty,
    /// A control or direction-changing character.
    Hidden,
}

/// Characters that change the direction of what follows them.
fn changes_direction(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show nothing: Unicode's default-ignorable code points
/// (zero-width spaces and joiners, word joiners, variation selectors, tag
/// characters, fillers, the soft hyphen), and blanks that are letters or
/// symbols to Unicode (the braille pattern blank).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{2800}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// A format character (category Cf) or a line or paragraph separator.
fn formats(c: char) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};
    matches!(
        c.general_category(),
        GeneralCategory::Format
            | GeneralCategory::LineSeparator
            | GeneralCategory::ParagraphSeparator
    )
}

/// The zero-width joiner and non-joiner: format characters that text
/// needs (emoji sequences, Persian and Indic words).
fn joiner(c: char) -> bool {
    matches!(c, '\u{200C}' | '\u{200D}')
}

/// Whether `c` is refused wherever it is.
fn hidden(c: char, multi_line: bool) -> bool {
    let allowed_control = multi_line && matches!(c, '\n' | '\r' | '\t');
    (c.is_control() && !allowed_control) || changes_direction(c) || (formats(c) && !joiner(c))
}

/// Checks `text`; `multi_line` allows line breaks and tabs.
pub fn check(text: &str, multi_line: bool) -> Result<(), Unfit> {
    if text.chars().any(|c| hidden(c, multi_line)) {
        return Err(Unfit::Hidden);
    }
    if text.chars().all(|c| c.is_whitespace() || invisible(c)) {
        return Err(Unfit::Empty);
    }
    Ok(())
}

/// The JSON Schema `pattern` (anchored) of the one-line texts [`check`]
/// accepts: none of the refused characters, and one that shows among the
/// rest. Built from the same rules over every code point; BMP characters
/// as `\uXXXX` escapes, the others as themselves.
pub fn one_line_pattern() -> String {
    let refused = class(|c| hidden(c, false));
    let blank = class(|c| !hidden(c, false) && (c.is_whitespace() || invisible(c)));
    format!("^[^{refused}]*[^{refused}{blank}][^{refused}]*$")
}

/// The characters `member` holds, as the inside of a character class.
fn class(member: impl Fn(char) -> bool) -> String {
    use std::fmt::Write as _;
    let one = |out: &mut String, c: char| {
        if (c as u32) < 0x10000 {
            let _ = write!(out, "\\u{:04X}", c as u32);
        } else {
            out.push(c);
        }
    };
    // Runs of members, as (first, last).
    let mut runs: Vec<(char, char)> = Vec::new();
    for c in (0..=0x10FFFF)
        .filter_map(char::from_u32)
        .filter(|c| member(*c))
    {
        match runs.last_mut() {
            Some((_, last)) if *last as u32 + 1 == c as u32 => *last = c,
            _ => runs.push((c, c)),
        }
    }
    let mut out = String::new();
    for (first, last) in runs {
        one(&mut out, first);
        if last != first {
            if last as u32 > first as u32 + 1 {
                out.push('-');
            }
            one(&mut out, last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Unfit, check};

    #[test]
    fn the_pattern_of_one_line_texts_lists_what_they_refuse_and_what_shows_nothing() {
        let p = super::one_line_pattern();
        // Controls, direction marks, zero-width spaces, the BOM, the
        // separators and tag characters are refused…
        assert!(
            p.starts_with("^[^\\u0000-\\u001F\\u007F-\\u009F\\u00AD"),
            "{p}"
        );
        for refused in [
            "\\u200B",
            "\\u2028-\\u202E",
            "\\uFEFF",
            "\\uFFF9-\\uFFFB",
            "\u{E0001}",
        ] {
            assert!(p.contains(refused), "{refused} in {p}");
        }
        // …the joiners, fillers and the braille blank only show nothing.
        for blank in ["\\u200C\\u200D", "\\u2800", "\\u3164"] {
            assert!(p.contains(blank), "{blank} in {p}");
        }
    }

    #[test]
    fn ordinary_text_of_any_script_passes() {
        for ok in [
            "Concert",
            "Café — première",
            "東京ドーム",
            "مسرح",
            "👩‍👩‍👧 family day", // a zero-width joiner inside an emoji
            "❤️‍🔥 tour",       // a joiner after a variation selector
            "می‌خواهم",       // a zero-width non-joiner inside a Persian word
            "Braille ⠁⠃ concert",
        ] {
            assert_eq!(check(ok, false), Ok(()), "{ok:?}");
        }
        assert_eq!(check("line one\nline two\ttabbed", true), Ok(()));
    }

    #[test]
    fn hidden_characters_and_invisible_only_text_are_refused() {
        for hidden in [
            "a\u{0}b",
            "bell\u{7}",
            "esc\u{1b}[31m",
            "del\u{7f}",
            "c1\u{85}",
            "evil\u{202E}gnp.exe",
            "isolate\u{2066}x\u{2069}",
            "mark\u{200F}",
            "arabic mark\u{061C}",
            // Format characters inside a title, and separators.
            "zero\u{200B}width",
            "word\u{2060}joiner",
            "bom\u{FEFF}",
            "annotation\u{FFF9}x\u{FFFB}",
            "tag\u{E0041}",
            "line\u{2028}separator",
            "para\u{2029}graph",
            "soft\u{00AD}hyphen",
        ] {
            assert_eq!(check(hidden, true), Err(Unfit::Hidden), "{hidden:?}");
        }
        assert_eq!(check("two\nlines", false), Err(Unfit::Hidden));
        for empty in [
            "",
            "   ",
            "\u{3164}",
            "\u{2800}",
            "\u{2800}\u{2800} \u{3164}",
            "\u{200D}\u{FE0F}",
        ] {
            assert_eq!(check(empty, false), Err(Unfit::Empty), "{empty:?}");
        }
    }
}
