//! The moderation service: on `comment.created` it decides `approved` or
//! `rejected` and publishes `comment.moderated`. A comment is rejected when
//! it holds one of the banned words as a whole word, in any case
//! (`BLOG_BANNED_WORDS`). Each verdict is stored with the event announcing it
//! in one transaction, so a comment is judged once, also when its event is
//! delivered twice; comments written while the service was down are judged
//! when it returns (its durable consumer kept them).

use std::collections::BTreeSet;
use std::sync::Arc;
use store::Conn as _;

use blog_events::{CommentCreated, CommentModerated, Verdict};
use bus::listener::{EventContext, ListenerError, ListenerOptions, Outcome};
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox};
use runtime::service::{Deps, Running};
use shared::time::Clock;
use store::{Migration, StoreError};

pub const SERVICE: &str = "moderation";

/// The banned words when `BLOG_BANNED_WORDS` is not set.
pub const DEFAULT_BANNED_WORDS: &str = "spam,scam";

pub static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "verdicts",
        sql: "CREATE TABLE verdicts (
                  comment_id TEXT PRIMARY KEY,
                  post_id TEXT NOT NULL,
                  status TEXT NOT NULL,
                  decided_at BIGINT NOT NULL
              );",
    },
    Migration {
        version: 2,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
];

/// The rule: the words a comment may not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    banned: BTreeSet<String>,
}

/// The parts of `text` a whole-word match compares: runs of letters and
/// digits, lowercased.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

impl Rules {
    /// Banned words, comma-separated (`spam, Scam`); blanks between commas
    /// are ignored. Each must be one word of letters and digits.
    pub fn parse(list: &str) -> Result<Rules, String> {
        let mut banned = BTreeSet::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if !entry.chars().all(char::is_alphanumeric) {
                return Err(format!(
                    "banned word {entry:?} must be one word of letters and digits"
                ));
            }
            banned.insert(entry.to_lowercase());
        }
        Ok(Rules { banned })
    }

    /// Rejected when a banned word appears as a whole word, in any case.
    pub fn judge(&self, content: &str) -> Verdict {
        if words(content).any(|w| self.banned.contains(&w)) {
            Verdict::Rejected
        } else {
            Verdict::Approved
        }
    }

    pub fn banned(&self) -> impl Iterator<Item = &str> {
        self.banned.iter().map(String::as_str)
    }
}

#[derive(Clone)]
pub struct Config {
    pub rules: Arc<Rules>,
}

async fn on_comment_created(
    (outbox, clock, rules): (Outbox, Clock, Arc<Rules>),
    e: CommentCreated,
    ctx: EventContext,
) -> Result<Outcome, ListenerError> {
    let now = clock.now();
    let verdict = rules.judge(&e.content);
    outbox
        .write(move |c| {
            let inserted = c.execute(
                "INSERT INTO verdicts (comment_id, post_id, status, decided_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (comment_id) DO NOTHING",
                &[&e.id, &e.post_id, &verdict.as_str(), &now],
            )?;
            if inserted == 1 {
                let event = CommentModerated {
                    id: e.id,
                    post_id: e.post_id,
                    status: verdict,
                };
                c.enqueue(&event, &ctx.trace, now)?;
                tracing::info!(comment = %e.id, verdict = verdict.as_str(), "comment moderated");
            }
            Ok::<_, StoreError>(())
        })
        .await?;
    Ok(Outcome::Done)
}

/// Opens the database, starts the relay and the listener. No routes but
/// the health checks.
pub async fn start(
    deps: &Deps,
    config: Config,
    options: ListenerOptions,
) -> Result<Running, StoreError> {
    let base = deps
        .open_service(blog_events::service_events(SERVICE), MIGRATIONS)
        .await?;
    let rules = config.rules;
    tracing::info!(banned = ?rules.banned().collect::<Vec<_>>(), "moderation rules");
    let listeners = base
        .listeners(options)
        .with_state((base.outbox.clone(), deps.clock.clone(), rules))
        .on(on_comment_created)
        .into_tasks();
    Ok(base.running(axum::Router::new(), listeners))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banned_words_match_whole_words_in_any_case() {
        let rules = Rules::parse("orange, Spam").unwrap();
        assert_eq!(rules.judge("I like ORANGE juice"), Verdict::Rejected);
        assert_eq!(rules.judge("spam!"), Verdict::Rejected);
        assert_eq!(rules.judge("(Orange)"), Verdict::Rejected);
        assert_eq!(rules.judge("orange's peel"), Verdict::Rejected);
        assert_eq!(rules.judge("oranges are fine"), Verdict::Approved);
        assert_eq!(rules.judge("spammer"), Verdict::Approved);
        assert_eq!(rules.judge("nothing to see"), Verdict::Approved);
        assert_eq!(rules.judge(""), Verdict::Approved);
    }

    #[test]
    fn letters_beyond_ascii_count_as_letters() {
        let rules = Rules::parse("Éclair").unwrap();
        assert_eq!(rules.judge("un éclair, merci"), Verdict::Rejected);
        assert_eq!(rules.judge("éclairs"), Verdict::Approved);
    }

    #[test]
    fn the_list_is_checked() {
        assert!(Rules::parse("ok, two words").is_err());
        assert!(Rules::parse("semi;colon").is_err());
        let empty = Rules::parse(" , ,").unwrap();
        assert_eq!(empty.banned().count(), 0);
        assert_eq!(empty.judge("spam"), Verdict::Approved);
        assert_eq!(
            Rules::parse(DEFAULT_BANNED_WORDS).unwrap().judge("a SCAM"),
            Verdict::Rejected
        );
    }
}
