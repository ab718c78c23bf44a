//! The command line, every clap type of it: `ticketing [run] [flags]`, the
//! blog's, and the operator's commands. Every process flag has an
//! environment variable equivalent.

use std::marker::PhantomData;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    Streams(Streams),
    /// The blog system (posts, comments, moderation, query and its page) on
    /// the same library: `ticketing blog` runs it all on one port.
    Blog(BlogCommand),
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
    Parked(operator::ParkedArgs),
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

/// `ticketing [run]`: a marketplace process's flags.
pub type RunArgs = ProcessArgs<MarketplaceFlags>;

/// The flags every process of a product has; `P` names their variables
/// and defaults, which differ between the products (`PORT` and 3000 for
/// the marketplace, `BLOG_PORT` and 4000 for the blog, …).
#[derive(Debug, Clone, Args)]
pub struct ProcessArgs<P: ProductFlags> {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = P::PORT_VAR, default_value = P::PORT)]
    pub port: u16,
    #[arg(long, env = P::DATA_DIR_VAR, default_value = P::DATA_DIR, help = P::DATA_DIR_HELP)]
    pub data_dir: PathBuf,
    #[arg(
        long,
        env = P::SERVICES_VAR,
        default_value = "all",
        value_delimiter = ',',
        help = P::SERVICES_HELP
    )]
    pub services: Vec<String>,
    #[command(flatten)]
    pub engines: EngineArgs,
    #[arg(skip)]
    pub product: PhantomData<P>,
}

/// A product's names and defaults for [`ProcessArgs`]. Defaults are text:
/// clap keeps a typed default (`default_value_t`) in one static shared by
/// every `P`, so the blog would show and take the marketplace's port.
pub trait ProductFlags: Clone + std::fmt::Debug + Send + Sync + 'static {
    const PORT_VAR: &'static str;
    const PORT: &'static str;
    const DATA_DIR_VAR: &'static str;
    const DATA_DIR: &'static str;
    const DATA_DIR_HELP: &'static str;
    const SERVICES_VAR: &'static str;
    const SERVICES_HELP: &'static str;
}

#[derive(Debug, Clone)]
pub struct MarketplaceFlags;

impl ProductFlags for MarketplaceFlags {
    const PORT_VAR: &'static str = "PORT";
    const PORT: &'static str = "3000";
    const DATA_DIR_VAR: &'static str = "TICKETING_DATA_DIR";
    const DATA_DIR: &'static str = "./data";
    const DATA_DIR_HELP: &'static str =
        "Where the embedded databases, the bus log and the generated JWT key live";
    const SERVICES_VAR: &'static str = "TICKETING_SERVICES";
    const SERVICES_HELP: &'static str = "Comma-separated services to run: auth, tickets, orders, \
        expiration, payments, web (the pages), gateway (alone: a reverse proxy to AUTH_URL, \
        TICKETS_URL, …), or all (every service and the pages, their routes in one router)";
}

#[derive(Debug, Clone)]
pub struct BlogFlags;

impl ProductFlags for BlogFlags {
    const PORT_VAR: &'static str = "BLOG_PORT";
    const PORT: &'static str = "4000";
    const DATA_DIR_VAR: &'static str = "BLOG_DATA_DIR";
    const DATA_DIR: &'static str = "./data/blog";
    const DATA_DIR_HELP: &'static str = "Where the embedded databases and the bus log live";
    const SERVICES_VAR: &'static str = "BLOG_SERVICES";
    const SERVICES_HELP: &'static str = "Comma-separated services to run: posts, comments, \
        moderation, query, web (the page; alone it needs BLOG_API_URL or POSTS_URL, \
        COMMENTS_URL and QUERY_URL), or all";
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

// ------------------------------------------------------------------- blog

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BlogCommand {
    #[command(subcommand)]
    pub command: Option<BlogSubcommand>,
    #[command(flatten)]
    pub run: BlogArgs,
}

#[derive(Debug, Subcommand)]
pub enum BlogSubcommand {
    /// Run the blog's services (the default): all of them and the page, on
    /// one port.
    Run(BlogArgs),
    /// Provision the blog's JetStream streams and consumers
    /// (deploy/blog-streams.yaml, built in): plan shows the difference,
    /// apply makes it so.
    #[command(subcommand)]
    Streams(Streams),
    /// Print the blog's event catalogue, or check it against the committed
    /// contract (docs/blog-events.json).
    Events {
        #[arg(long, value_enum, default_value = "markdown")]
        format: crate::catalogue::Format,
        #[command(subcommand)]
        command: Option<EventsCommand>,
    },
}

/// `ticketing blog [run]`: a blog process's flags.
#[derive(Debug, Clone, Args)]
pub struct BlogArgs {
    #[command(flatten)]
    pub process: ProcessArgs<BlogFlags>,
    /// Words that get a comment rejected, comma-separated (whole words, any
    /// case).
    #[arg(
        long,
        env = "BLOG_BANNED_WORDS",
        default_value = blog_moderation::DEFAULT_BANNED_WORDS
    )]
    pub banned_words: String,
    /// The operator's bearer token for the parked-message admin API
    /// (`/api/admin/parked`, and `ticketing parked --url … --token …`).
    /// The blog has no accounts: without a token that API is not served.
    #[arg(long, env = "BLOG_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl BlogCommand {
    /// The name this process reports to trace collectors by default.
    pub fn service_name(&self) -> String {
        let run = match &self.command {
            None => &self.run,
            Some(BlogSubcommand::Run(run)) => run,
            Some(BlogSubcommand::Streams(_) | BlogSubcommand::Events { .. }) => {
                return "blog".to_owned();
            }
        };
        runtime::role::process_name(&run.process.services, "blog", "blog-")
    }
}

// ---------------------------------------------------------------- streams

#[derive(Debug, clap::Subcommand)]
pub enum Streams {
    /// Compare the spec with the server and print what apply would change.
    /// Exit code 0: the server matches; 2: changes are pending; 1: error.
    Plan(StreamsArgs),
    /// Make the server match the spec; changes nothing if the plan holds a
    /// change that needs --allow-recreate, or the spec asks what the server
    /// cannot do. Exit code 0 when the server matches afterwards.
    Apply(StreamsArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct StreamsArgs {
    /// The spec file. Without it: the copy built into this binary
    /// (deploy/streams.yaml; deploy/blog-streams.yaml for `blog streams`).
    #[arg(short = 'f', long = "file", env = "TICKETING_STREAMS_FILE")]
    pub file: Option<PathBuf>,
    /// The NATS server (with JetStream).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// How long to wait for NATS to come up before giving up (30s, 2m, …).
    #[arg(long, default_value = "60s", value_parser = parse_wait)]
    pub wait: Duration,
    /// Delete and recreate streams or consumers whose changes JetStream
    /// cannot make in place (their messages or positions are lost).
    #[arg(long)]
    pub allow_recreate: bool,
    /// Delete streams and consumers this tool created that the spec no
    /// longer declares (never anything it does not own).
    #[arg(long)]
    pub prune: bool,
    /// Replicas for every stream instead of the spec's: 1 on a single
    /// server, 3 on a three-node cluster.
    #[arg(long, env = "TICKETING_STREAM_REPLICAS")]
    pub replicas: Option<u32>,
}

fn parse_wait(text: &str) -> Result<Duration, String> {
    provision::spec::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The flag `name` of `command`: its variable and default.
    fn flag(command: &clap::Command, name: &str) -> (String, String) {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == name)
            .unwrap_or_else(|| panic!("no --{name}"));
        let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
        let default = arg.get_default_values().first();
        (
            env.unwrap_or_default(),
            default
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )
    }

    #[test]
    fn each_products_processes_take_their_own_variables_and_defaults() {
        let cli = Cli::command();
        let blog = cli.find_subcommand("blog").unwrap().clone();
        let blog_run = blog.find_subcommand("run").unwrap();
        let run = cli.find_subcommand("run").unwrap();
        for marketplace in [&cli, run] {
            assert_eq!(flag(marketplace, "port"), ("PORT".into(), "3000".into()));
            assert_eq!(
                flag(marketplace, "data_dir"),
                ("TICKETING_DATA_DIR".into(), "./data".into())
            );
            assert_eq!(flag(marketplace, "services").0, "TICKETING_SERVICES");
        }
        // A typed default would be the marketplace's here (clap keeps it in
        // one static for every product).
        for blog in [&blog, blog_run] {
            assert_eq!(flag(blog, "port"), ("BLOG_PORT".into(), "4000".into()));
            assert_eq!(
                flag(blog, "data_dir"),
                ("BLOG_DATA_DIR".into(), "./data/blog".into())
            );
            assert_eq!(flag(blog, "services").0, "BLOG_SERVICES");
        }
    }
}
