//! The FGA data plane: a relationship-based authorization service speaking
//! the OpenFGA HTTP API (work in progress; see the README).
//!
//! - [`model`]: authorization models in OpenFGA's JSON shape, validated.
//! - [`dsl`]: the modeling language (DSL) parser.
//! - [`engine`]: Check, ListObjects and ListUsers over a [`engine::TupleReader`].
//! - [`memstore`]: an in-memory tuple store with the database's indexes.
//! - [`validate`]: request and tuple validation with OpenFGA's error codes.

pub mod api;
pub mod cache;
pub mod dsl;
pub mod engine;
pub mod memstore;
pub mod metrics;
pub mod model;
pub mod modeltest;
pub mod ratelimit;
pub mod recursion;
pub mod secrets;
pub mod store;
pub mod validate;
