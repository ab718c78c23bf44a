//! E-mail addresses: normalised so one mailbox has one spelling, and
//! plausibly deliverable.
//!
//! An address is one account, so two spellings of it must not make two:
//! fullwidth letters (`ａdmin@ｅxample.com`) are folded by NFKC, the domain
//! goes through IDNA (UTS 46) to its ASCII form (`bücher.example` is kept as
//! `xn--bcher-kva.example`, the form mail is routed by), and a domain label
//! that mixes scripts (`exаmple.com` with a Cyrillic `а`) is refused, as
//! browsers refuse to show such names. A label written wholly in another
//! script (`пример.example`) is a different domain and passes.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

const INVALID: &str = "Email must be valid";
const MIXED: &str = "Email's domain must not mix scripts (such as Latin and Cyrillic) in one label";

impl Email {
    /// Normalises and checks an address; the error is the user-facing message.
    ///
    /// After NFKC and lower-casing: the usual address syntax (RFC 5321's
    /// dot-atom form, without quoted local parts or address literals,
    /// which no sign-up form expects): a local part of ASCII letters,
    /// digits and ``!#$%&'*+/=?^_`{|}~-``, dots only between them; a domain
    /// of two or more labels that IDNA accepts, each in one script (Latin
    /// with Han and kana or Hangul counts as one, as Japanese and Korean
    /// names are written), stored in ASCII; the last label not all digits.
    pub fn parse(raw: &str) -> Result<Email, &'static str> {
        use unicode_normalization::UnicodeNormalization as _;
        let folded: String = raw.trim().nfkc().collect::<String>().to_lowercase();
        if folded.is_empty() || folded.len() > 254 || crate::text::check(&folded, false).is_err() {
            return Err(INVALID);
        }
        let Some((local, domain)) = folded.rsplit_once('@') else {
            return Err(INVALID);
        };
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .split('.')
                .all(|atom| !atom.is_empty() && atom.chars().all(atext));
        if !local_ok || !domain.contains('.') {
            return Err(INVALID);
        }
        // UTS 46 with the STD3 rules: letters, digits and inner hyphens in
        // each label; maps what it can (case, width) and refuses the rest.
        let ascii = idna::domain_to_ascii_strict(domain).map_err(|_| INVALID)?;
        let labels_ok = ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
        let tld_numeric = ascii
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
        if !labels_ok || tld_numeric {
            return Err(INVALID);
        }
        let (unicode, checked) = idna::domain_to_unicode(&ascii);
        if checked.is_err() || unicode.split('.').any(|l| !single_script(l)) {
            return Err(MIXED);
        }
        let email = format!("{local}@{ascii}");
        if email.len() > 254 {
            return Err(INVALID);
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a domain label is written in one script, in UTS 39's "highly
/// restrictive" sense: one script, or Latin with the scripts a Japanese,
/// Chinese or Korean name mixes (Han with Hiragana and Katakana, with
/// Bopomofo, or with Hangul). Digits, hyphens and marks belong to every
/// script. Hand-written: the crates that implement UTS 39 would add a
/// second Unicode database beside the one IDNA already brings.
fn single_script(label: &str) -> bool {
    use icu_properties::CodePointMapData;
    use icu_properties::props::Script;
    let scripts = CodePointMapData::<Script>::new();
    let mut seen: Vec<Script> = Vec::new();
    for c in label.chars() {
        let s = scripts.get(c);
        if matches!(s, Script::Common | Script::Inherited) || seen.contains(&s) {
            continue;
        }
        seen.push(s);
    }
    if seen.len() <= 1 {
        return true;
    }
    let within = |allowed: &[Script]| seen.iter().all(|s| allowed.contains(s));
    within(&[
        Script::Latin,
        Script::Han,
        Script::Hiragana,
        Script::Katakana,
    ]) || within(&[Script::Latin, Script::Han, Script::Bopomofo])
        || within(&[Script::Latin, Script::Han, Script::Hangul])
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    fn parsed(raw: &str) -> String {
        Email::parse(raw)
            .unwrap_or_else(|e| panic!("{raw:?}: {e}"))
            .to_string()
    }

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        assert_eq!(parsed("  Ann@Example.COM "), "ann@example.com");
    }

    #[test]
    fn look_alike_spellings_of_one_address_become_that_address() {
        // Fullwidth letters, in the local part and in the domain.
        assert_eq!(parsed("ａｄｍｉｎ@ｅxample.com"), "admin@example.com");
        assert_eq!(parsed("admin@ＥＸＡＭＰＬＥ.ＣＯＭ"), "admin@example.com");
        // A ligature and a superscript folded by NFKC.
        assert_eq!(parsed("ﬁnance@example.com"), "finance@example.com");
        // An internationalised domain is kept in its ASCII form, whichever
        // way it was written.
        assert_eq!(parsed("ann@bücher.example"), "ann@xn--bcher-kva.example");
        assert_eq!(parsed("ann@BÜCHER.example"), "ann@xn--bcher-kva.example");
        assert_eq!(
            parsed("ann@xn--bcher-kva.example"),
            "ann@xn--bcher-kva.example"
        );
    }

    #[test]
    fn a_domain_label_mixing_scripts_is_refused_one_script_passes() {
        for mixed in [
            "admin@exаmple.com",        // Cyrillic а
            "admin@εxample.com",        // Greek ε
            "admin@paypal.cоm",         // Cyrillic о in the top-level label
            "admin@xn--exmple-4nf.com", // the Cyrillic one, sent as ASCII
        ] {
            assert_eq!(
                Email::parse(mixed),
                Err(super::MIXED),
                "{mixed:?} was accepted"
            );
        }
        for one in [
            "ann@пример.example",
            "ann@例え.jp",
            "ann@ドメイン名例.jp",
            "ann@sony-ソニー.jp",
            "ann@한국.kr",
        ] {
            assert!(Email::parse(one).is_ok(), "{one:?} was refused");
        }
    }

    #[test]
    fn usual_addresses_pass() {
        for ok in [
            "ann@example.com",
            "ann.lee+tickets@mail.example.co.uk",
            "o'brien@example.ie",
            "x_y-z@sub-domain.example.org",
            "ann@bücher.example",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok:?} was refused");
        }
    }

    #[test]
    fn implausible_addresses_are_refused() {
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "a@b@c.com",
            "ann@.com",
            "ann@example..com",
            "ann.@example.com",
            ".ann@example.com",
            "an..n@example.com",
            "ann@-example.com",
            "ann@example-.com",
            "ann@example.123",
            "\"ann\"@example.com",
            "ann@[127.0.0.1]",
            "ann(comment)@example.com",
            "ann\u{0}@example.com",
            "ann@exa\u{202E}mple.com",
            "ann@exa\u{200B}mple.com",
            "ann\u{200D}@example.com",
            "ann@exa\u{2060}mple.com",
            "ann\u{FEFF}@example.com",
            "ann\u{7}@example.com",
            "ann<b>@example.com",
            "ann@example.com\nbcc@evil.example",
            "ann@exam_ple.com",
            "ännchen@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
