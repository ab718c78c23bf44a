//! NATS subject matching: tokens separated by `.`, `*` matches one token,
//! `>` (last) matches one or more.

/// Whether `subject` matches `filter`.
pub fn matches(filter: &str, subject: &str) -> bool {
    let mut f = filter.split('.');
    let mut s = subject.split('.');
    loop {
        match (f.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("ticket.created", "ticket.created"));
        assert!(!matches("ticket.created", "ticket.updated"));
        assert!(matches("ticket.*", "ticket.updated"));
        assert!(!matches("ticket.*", "ticket.a.b"));
        assert!(matches("ticket.>", "ticket.a.b"));
        assert!(!matches("ticket.>", "ticket"));
        assert!(matches(">", "anything.at.all"));
        assert!(!matches("ticket", "ticket.created"));
    }
}
