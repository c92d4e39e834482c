//! The integration-test binary: one link step for every test of the public surface.

mod admin;
mod agents_files;
mod cli;
mod cluster;
mod conformance;
mod contracts;
mod doc_examples;
mod docs;
mod drift;
mod errors_and_system;
mod helpers;
mod hot_reload;
mod limits;
mod persistence;
mod procs;
mod properties;
mod providers;
mod real_model;
mod snapshots;
mod statuses;
mod upstream;
mod v1_agents;
mod v1_chat;
mod v1_keys;
mod v1_runs;
mod v1_usage;
