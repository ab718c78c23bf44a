//! What user-written text may contain. Refused: control characters (a
//! multi-line text may have line breaks and tabs), and the invisible
//! characters that change the direction text is shown in (bidi overrides
//! and isolates, as in "Trojan Source"), which let a title display as
//! something other than what it says. Text made only of spaces and
//! invisible characters counts as empty.

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
/// characters, fillers, the soft hyphen).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
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

/// Checks `text`; `multi_line` allows line breaks and tabs.
pub fn check(text: &str, multi_line: bool) -> Result<(), Unfit> {
    let allowed_control = |c: char| multi_line && matches!(c, '\n' | '\r' | '\t');
    if text
        .chars()
        .any(|c| (c.is_control() && !allowed_control(c)) || changes_direction(c))
    {
        return Err(Unfit::Hidden);
    }
    if text.chars().all(|c| c.is_whitespace() || invisible(c)) {
        return Err(Unfit::Empty);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Unfit, check};

    #[test]
    fn ordinary_text_of_any_script_passes() {
        for ok in [
            "Concert",
            "Café — première",
            "東京ドーム",
            "مسرح",
            "👩‍👩‍👧 family day", // a zero-width joiner inside an emoji
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
        ] {
            assert_eq!(check(hidden, true), Err(Unfit::Hidden), "{hidden:?}");
        }
        assert_eq!(check("two\nlines", false), Err(Unfit::Hidden));
        for empty in [
            "",
            "   ",
            "\u{200B}",
            "\u{200B}\u{2060}\u{FEFF}",
            "\u{3164}",
            " \u{00AD} ",
            "\u{E0041}",
        ] {
            assert_eq!(check(empty, false), Err(Unfit::Empty), "{empty:?}");
        }
    }
}
