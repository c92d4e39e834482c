//! ares: a configuration-driven API engine serving the ARES V1 Client API.
//!
//! See `docs/ARCHITECTURE.md` for the code map and the invariants between modules.

pub mod agents;
pub mod api;
pub mod cli;
pub mod config;
pub mod conformance;
pub mod diag;
pub mod engine;
pub mod junit;
pub mod llm;
pub mod schema_check;
pub mod server;
pub mod store;
pub mod tools;
pub mod yaml;
