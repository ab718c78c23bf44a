//! The command line: `ticketing [run] [flags]`. Every flag has an environment
//! variable equivalent.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ticketing",
    version,
    about = "A ticket resale marketplace of event-driven services"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run services (the default): all of them, with the gateway, on one port.
    Run(RunArgs),
    /// Drills that check the system's guarantees on real processes.
    #[command(subcommand)]
    Drill(Drill),
    /// Provision JetStream streams and consumers from the spec
    /// (deploy/streams.yaml): plan shows the difference, apply makes it so.
    #[command(subcommand)]
    Streams(crate::streams::Streams),
    /// The blog system (posts, comments, moderation, query and its page) on
    /// the same library: `ticketing blog` runs it all on one port.
    Blog(crate::blog::BlogCommand),
    /// Print the event catalogue (every subject, its JSON Schema, publisher,
    /// consumers and stream) or the flow map, generated from the code.
    Events {
        #[arg(long, value_enum, default_value = "markdown")]
        format: crate::catalogue::Format,
        #[command(subcommand)]
        command: Option<EventsCommand>,
    },
    /// Parked messages (events a consumer gave up on): list, show, replay
    /// to the consumer that parked them, or discard — through the running
    /// system's admin API, as an admin.
    Parked(crate::parked::ParkedArgs),
    /// Operator commands on the payments service's data.
    Payments(PaymentsArgs),
    /// Operator commands on accounts (the auth service's data): grant or
    /// revoke the admin role.
    Users(UsersArgs),
    /// Exit 0 if URL answers 2xx within 3 s, else 1 with the reason: a health
    /// check for images without a shell or curl (docker-compose).
    Probe {
        /// e.g. http://127.0.0.1:3000/readyz
        #[arg(default_value = "http://127.0.0.1:3000/readyz")]
        url: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Compare the code's events with the committed contract and fail on
    /// a change that breaks consumers (a field removed or renamed, a type
    /// changed, a new required field, an enum value removed, an event
    /// removed); compatible changes ask for the contract to be regenerated.
    Check {
        /// The committed contract (`ticketing [blog] events --format json`);
        /// by default docs/events.json (docs/blog-events.json for the blog).
        #[arg(long)]
        contract: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum Drill {
    /// Parallel clients sell and edit tickets on replicas of the tickets and
    /// orders services (NATS JetStream + PostgreSQL); checks that every copy
    /// converges, each event is handled once, and one order wins per ticket.
    Concurrency(drill::concurrency::ConcurrencyArgs),
    /// The marketplace on a three-node NATS cluster (streams with three
    /// replicas) and PostgreSQL under a steady purchase load, while NATS
    /// nodes are killed and restarted; checks that nothing is lost, applied
    /// twice or sold twice, and reports what each fault cost.
    Cluster(drill::cluster_drill::ClusterArgs),
}

/// `ticketing payments …`: run against the payments database the service
/// uses (the same `TICKETING_DATA_DIR` or `DATABASE_URL`/`PAYMENTS_DATABASE_URL`
/// and `STRIPE_SECRET_KEY`); events it records are published by the running
/// payments service's outbox relay.
#[derive(Debug, clap::Args)]
pub struct PaymentsArgs {
    #[command(subcommand)]
    pub command: PaymentsCommand,
}

/// Which service database an operator command works on.
#[derive(Debug, clap::Args)]
pub struct PaymentsData {
    /// Where the embedded databases live.
    #[arg(long, env = "TICKETING_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub engines: EngineArgs,
}

#[derive(Debug, Subcommand)]
pub enum PaymentsCommand {
    /// Give the money of a captured payment back: refunds it at the gateway
    /// (once, however often it is run) and records `payment.refunded`.
    Refund {
        /// The payment's id (from `GET /api/payments/:id` or the logs).
        id: String,
        #[command(flatten)]
        data: PaymentsData,
    },
}

/// `ticketing users …`: run against the auth database the service uses
/// (the same `TICKETING_DATA_DIR` or `DATABASE_URL`/`AUTH_DATABASE_URL`);
/// the events they record are published by the running auth service's
/// outbox relay.
#[derive(Debug, clap::Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    pub command: UsersCommand,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Make the account with this e-mail address an admin (it may list,
    /// ban and unban users and act on parked messages); records
    /// `user.admin-granted`.
    GrantAdmin {
        /// The account's e-mail address (it must have signed up).
        email: String,
        #[command(flatten)]
        data: PaymentsData,
    },
    /// Take the admin role away from the account with this e-mail address;
    /// records `user.admin-revoked`.
    RevokeAdmin {
        email: String,
        #[command(flatten)]
        data: PaymentsData,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Where the embedded databases, the bus log and the generated JWT key live.
    #[arg(long, env = "TICKETING_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Comma-separated services to run: auth, tickets, orders, expiration,
    /// payments, web (the pages), gateway (alone: a reverse proxy to
    /// AUTH_URL, TICKETS_URL, …), or all (every service and the pages, their
    /// routes in one router).
    #[arg(
        long,
        env = "TICKETING_SERVICES",
        default_value = "all",
        value_delimiter = ','
    )]
    pub services: Vec<String>,
    #[command(flatten)]
    pub engines: EngineArgs,
}

/// Where the services keep their data and events (the marketplace's and
/// the blog's alike).
#[derive(Debug, Clone, clap::Args)]
pub struct EngineArgs {
    /// NATS server with JetStream; without it the embedded bus is used.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// PostgreSQL URL; without it each service uses SQLite in the data
    /// directory. With several services in one process, each uses
    /// `<SERVICE>_DATABASE_URL` if set, else this URL with the database name
    /// `ticketing_<service>` (`blog_<service>` for the blog).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

impl EngineArgs {
    /// The URLs that choose the engines.
    pub fn urls(&self) -> runtime::engines::EngineUrls {
        runtime::engines::EngineUrls {
            nats_url: self.nats_url.clone(),
            database_url: self.database_url.clone(),
        }
    }
}

impl Cli {
    /// The name this process reports to trace collectors by default:
    /// `ticketing` for the all-in-one process and one-shot commands, else
    /// the services it runs (`tickets`, `orders+payments`, …).
    pub fn service_name(&self) -> String {
        let run = match &self.command {
            None => &self.run,
            Some(Command::Run(run)) => run,
            Some(Command::Blog(blog)) => return blog.service_name(),
            Some(_) => return "ticketing".to_owned(),
        };
        runtime::role::process_name(&run.services, "ticketing", "")
    }
}
