//! E-mail addresses: trimmed, lower-cased, plausibly deliverable.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Normalises and checks an address; the error is the user-facing message.
    ///
    /// The usual address syntax (RFC 5321's dot-atom form, without quoted
    /// local parts or address literals, which no sign-up form expects):
    /// a local part of letters, digits and ``!#$%&'*+/=?^_`{|}~-``, dots
    /// only between them; a domain of two or more labels of letters
    /// (any script), digits and inner hyphens, the last not all digits.
    pub fn parse(raw: &str) -> Result<Email, &'static str> {
        let email = raw.trim().to_lowercase();
        let invalid = Err("Email must be valid");
        if email.is_empty() || email.len() > 254 {
            return invalid;
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return invalid;
        };
        let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~-".contains(c);
        let dotted = |s: &str, part: &dyn Fn(&str) -> bool| s.split('.').all(part);
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && dotted(local, &|atom: &str| {
                !atom.is_empty() && atom.chars().all(atext)
            });
        let label = |l: &str| {
            !l.is_empty()
                && l.chars().count() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        let domain_ok = domain.contains('.')
            && dotted(domain, &label)
            && !domain
                .rsplit('.')
                .next()
                .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()));
        if !local_ok || !domain_ok {
            return invalid;
        }
        Ok(Email(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    #[test]
    fn addresses_are_trimmed_and_lower_cased() {
        assert_eq!(
            Email::parse("  Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
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
            "ann\u{7}@example.com",
            "ann<b>@example.com",
            "ann@example.com\nbcc@evil.example",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
