//! The Conductor service: store, engine, targets, API and CLI.
//!
//! The pure rules live in `conductor-core`; this crate is the shell that
//! persists events, holds leases, runs steps against cells and serves HTTP.

pub mod actuators;
pub mod api;
pub mod auth;
pub mod capacity;
pub mod cli;
pub mod clock;
pub mod engine;
pub mod leases;
pub mod metrics;
pub mod planner;
pub mod procs;
pub mod replica;
pub mod resizer;
pub mod store;
pub mod targets;
pub mod up;
pub mod workflow;
