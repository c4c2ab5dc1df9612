//! The HTTP API in process: the real router, store and engine (simulated
//! cells), called without a socket.

mod artifacts;
mod audit;
mod common;
mod errors;
mod revisions;
mod roles;
mod routes;
mod stream;
mod tokens;
mod upgrade;
