//! The drills the binary runs as `ticketing drill …`, and the harness they
//! share with the multi-process tests:
//!
//! - [`cluster`]: the microservices mode on one machine — a nats-server of
//!   its own and `ticketing run` child processes that can be killed and
//!   started again;
//! - [`concurrency`]: `ticketing drill concurrency`, replicas racing on one
//!   ticket;
//! - [`cluster_drill`]: `ticketing drill cluster`, the marketplace on a
//!   three-node NATS cluster under faults, with a per-event ledger.
//!
//! They drive the binary from outside (its path is given), so they know
//! the marketplace only by its contract and its HTTP API.

pub mod cluster;
pub mod cluster_drill;
pub mod concurrency;
