//! Typed listeners: subscribe a handler for one event type to its durable
//! consumer, decode each message into that type, and settle the delivery by
//! the handler's outcome. Acks happen only after the handler (and so its
//! transaction) has finished.
//!
//! Here: what handlers see and answer, the replica rule, readiness and the
//! builder ([`Listeners`]); how each member of a listener runs — joining its
//! consumer, decoding, applying one event or a batch, settling — is in
//! `member`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shared::events::Event;
use shared::http::NotReady;
use shared::shutdown::Shutdown;
use shared::trace::{TRACEPARENT, TraceContext};

use crate::outbox::{Outbox, OutboxTx};
use crate::{Bus, ConsumerConfig, Delivery};

mod member;

use member::{InTransaction, Member, OneAtATime, spawn_members};

/// What a handler decided about an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, or a duplicate safely ignored: ack it.
    Done,
    /// Arrived before its predecessor: deliver it again shortly.
    NotYet(String),
}

/// A failure that may pass (a database hiccup, a gateway timeout): the event
/// is delivered again with back-off until it succeeds or is parked. Each
/// keeps its cause as its source; the log line shows the whole chain.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The handler's database failed.
    #[error("the handler's database failed")]
    Store(#[from] store::StoreError),
    /// The bus failed.
    #[error("the bus failed")]
    Bus(#[from] crate::BusError),
    /// Something else the handler needs failed (a payment gateway, …).
    #[error("{context}")]
    Dependency {
        context: String,
        #[source]
        source: store::BoxError,
    },
}

impl ListenerError {
    /// `context` failed because of `source`.
    pub fn dependency(context: impl Into<String>, source: impl Into<store::BoxError>) -> Self {
        ListenerError::Dependency {
            context: context.into(),
            source: source.into(),
        }
    }
}

/// Facts about the delivery an event came in.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// Continue this trace in whatever the handler publishes.
    pub trace: TraceContext,
    pub message_id: String,
    pub delivered: u32,
}

/// Tuning for one listener.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// How long a delivery may go unacknowledged before the bus hands it to
    /// another member. Short, because it is how long the events a crashed
    /// replica had in hand wait; slow handlers are covered by progress acks
    /// sent every half period.
    pub ack_wait: Duration,
    pub max_deliver: u32,
    /// Members of the durable consumer this process runs.
    pub concurrency: usize,
    /// The most deliveries a listener added with [`Listeners::on_tx`]
    /// applies in one transaction (those already in hand when it takes the
    /// first; it never waits for a batch to fill).
    pub batch: usize,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            ack_wait: Duration::from_secs(5),
            max_deliver: 20,
            concurrency: 1,
            batch: 64,
        }
    }
}

/// The durable consumer name for `service` consuming `subject`:
/// `orders-ticket-created`. (JetStream durable names cannot hold dots.)
pub fn durable_name(service: &str, subject: &str) -> String {
    format!("{service}-{}", subject.replace('.', "-"))
}

/// The replica rule for versioned records: given the version stored locally
/// (`None` if the record is unknown) and an event's version, `None` means
/// "apply it"; `Some(outcome)` means ack it as a duplicate (`Done`) or wait
/// for its predecessor (`NotYet`).
pub fn check_version(what: &str, stored: Option<i64>, incoming: i64) -> Option<Outcome> {
    match stored {
        None => Some(Outcome::NotYet(format!("{what} not seen yet"))),
        Some(v) if v >= incoming => Some(Outcome::Done),
        Some(v) if v + 1 < incoming => Some(Outcome::NotYet(format!(
            "{what} at version {v}, event at {incoming}"
        ))),
        Some(_) => None,
    }
}

/// Whether each of a service's listeners has joined its durable consumer:
/// part of the service's readiness (a missing stream shows up here).
#[derive(Clone, Default)]
pub struct ListenerHealth(
    Arc<std::sync::Mutex<std::collections::BTreeMap<String, Option<NotReady>>>>,
);

impl ListenerHealth {
    fn set(&self, durable: &str, problem: Option<NotReady>) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(durable.to_owned(), problem);
    }

    /// `Err` naming every listener that has not joined its consumer, and why.
    pub fn check(&self) -> Result<(), NotReady> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let problems: Vec<&NotReady> = map.values().flatten().collect();
        if problems.is_empty() {
            return Ok(());
        }
        let join = |part: fn(&NotReady) -> Option<String>| {
            problems
                .iter()
                .filter_map(|p| part(p))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let detail = join(|p| p.detail.as_ref().map(|d| format!("{}: {d}", p.reason)));
        Err(NotReady {
            reason: join(|p| Some(p.reason.clone())),
            detail: (!detail.is_empty()).then_some(detail),
        })
    }
}

/// The listeners of one service, started one event type at a time: the one
/// way a service consumes events. Each handler is given the service's state
/// (cloned for every event; see [`Listeners::with_state`]), the event and
/// its delivery's context:
///
/// ```ignore
/// base.listeners(options)
///     .with_state(state)
///     .on(on_order_created)   // async fn(AppState, OrderCreated, EventContext) -> Result<Outcome, ListenerError>
///     .on(on_order_cancelled)
///     .into_tasks()
/// ```
///
/// Every member of each listener keeps trying to join its durable consumer
/// (the bus may not be ready yet) and then handles deliveries until the
/// shutdown signal fires, finishing the one in hand first.
pub struct Listeners<S = ()> {
    /// What each listener added with [`Listeners::on`] runs with.
    member: Member,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Subjects registered with [`Listeners::on`].
    registered: Vec<&'static str>,
    /// Subjects the service declares it consumes, if it declares any.
    declared: Option<&'static [&'static str]>,
    /// Given to every handler.
    state: S,
}

impl Listeners {
    pub fn new(
        bus: Arc<dyn Bus>,
        service: &'static str,
        options: ListenerOptions,
        shutdown: Shutdown,
    ) -> Self {
        Listeners {
            member: Member {
                bus,
                service,
                options,
                shutdown,
                gate: None,
                after: None,
                health: ListenerHealth::default(),
                outbox: None,
            },
            tasks: Vec::new(),
            registered: Vec::new(),
            declared: None,
            state: (),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Listeners<S> {
    /// Handlers added after this are given `state` (cloned per event).
    pub fn with_state<T: Clone + Send + Sync + 'static>(self, state: T) -> Listeners<T> {
        Listeners {
            member: self.member,
            tasks: self.tasks,
            registered: self.registered,
            declared: self.declared,
            state,
        }
    }

    /// [`Listeners::into_tasks`] panics unless exactly `subjects` were
    /// registered: the service's entry in the event catalogue must say
    /// what its code consumes.
    pub fn declared(mut self, subjects: &'static [&'static str]) -> Self {
        self.declared = Some(subjects);
        self
    }

    /// Listeners added after this wait until `db`'s schema is ready before
    /// they join their consumers.
    pub fn gated_on(mut self, db: store::Db) -> Self {
        self.member.gate = Some(db);
        self
    }

    /// Listeners added after this join their consumers only once `go`
    /// says `true` (a service that prepares its consumers first, such as a
    /// read model rewinding them to rebuild). Dropping the sender without
    /// saying `true` keeps them out for good.
    pub fn after(mut self, go: tokio::sync::watch::Receiver<bool>) -> Self {
        self.member.after = Some(go);
        self
    }

    /// Reports into `health` whether each listener has joined its consumer.
    pub fn reporting_to(mut self, health: ListenerHealth) -> Self {
        self.member.health = health;
        self
    }

    /// Listeners added with [`Listeners::on_tx`] after this run their
    /// transactions on `outbox`'s database (a service's listeners get the
    /// service's outbox).
    pub fn applying_in(mut self, outbox: Outbox) -> Self {
        self.member.outbox = Some(outbox);
        self
    }

    /// Starts `handler` for every `E` delivered to this service's durable
    /// consumer; `E` is the handler's second argument. The handler opens
    /// whatever transactions it needs and may call out (a payment gateway):
    /// deliveries are handled one at a time.
    pub fn on<E, H, Fut>(mut self, handler: H) -> Self
    where
        E: Event,
        H: Fn(S, E, EventContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Outcome, ListenerError>> + Send + 'static,
    {
        let state = self.state.clone();
        let handler = move |e: E, ctx: EventContext| handler(state.clone(), e, ctx);
        let tasks = spawn_members::<E>(self.member.clone(), OneAtATime(handler));
        self.tasks.extend(tasks);
        self.registered.push(E::SUBJECT);
        self
    }

    /// Starts `handler` for every `E` delivered, inside a transaction the
    /// listener opens (on the outbox given to [`Listeners::applying_in`]),
    /// so the deliveries in hand — up to [`ListenerOptions::batch`] — are
    /// applied in one transaction and acknowledged together after it
    /// commits. For handlers that only read and write the service's
    /// database (and enqueue events): it runs on the database's thread.
    ///
    /// Per delivery the handler still decides: [`Outcome::Done`] (acked),
    /// [`Outcome::NotYet`] (nak'ed with a delay — **it must have written
    /// nothing**, as the version check does by returning before any write),
    /// or an error, which rolls the whole batch back; its deliveries are
    /// then applied again one transaction each, so a poison message is
    /// retried and parked alone, exactly as with [`Listeners::on`].
    ///
    /// # Panics
    /// If no outbox was given with [`Listeners::applying_in`].
    pub fn on_tx<E, H>(mut self, handler: H) -> Self
    where
        E: Event,
        H: Fn(&S, &mut OutboxTx<'_>, E, &EventContext) -> Result<Outcome, ListenerError>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let outbox = self.member.outbox.clone().unwrap_or_else(|| {
            panic!(
                "{}: listeners added with on_tx need an outbox (Listeners::applying_in)",
                self.member.service
            )
        });
        let state = self.state.clone();
        let handler =
            move |tx: &mut OutboxTx<'_>, e: E, ctx: &EventContext| handler(&state, tx, e, ctx);
        let tasks = spawn_members::<E>(self.member.clone(), InTransaction { outbox, handler });
        self.tasks.extend(tasks);
        self.registered.push(E::SUBJECT);
        self
    }

    pub fn into_tasks(self) -> Vec<tokio::task::JoinHandle<()>> {
        if let Some(declared) = self.declared {
            let mut registered = self.registered.clone();
            let mut declared = declared.to_vec();
            registered.sort_unstable();
            declared.sort_unstable();
            assert_eq!(
                registered, declared,
                "{} registers listeners for {registered:?} but its entry in the event \
                 catalogue says it consumes {declared:?}",
                self.member.service
            );
        }
        self.tasks
    }
}

#[cfg(test)]
mod version_tests {
    use super::{Outcome, check_version};

    #[test]
    fn only_the_next_version_applies() {
        assert_eq!(check_version("t", Some(3), 4), None);
        assert_eq!(check_version("t", Some(3), 3), Some(Outcome::Done));
        assert_eq!(check_version("t", Some(3), 1), Some(Outcome::Done));
        assert!(matches!(
            check_version("t", Some(3), 5),
            Some(Outcome::NotYet(_))
        ));
        assert!(matches!(
            check_version("t", None, 0),
            Some(Outcome::NotYet(_))
        ));
    }
}
