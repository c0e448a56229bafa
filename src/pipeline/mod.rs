//! The pipelines behind the subcommands: each wires sources, routing and
//! destinations together and owns shutdown.

pub mod bridge;
mod journal_stage;
pub mod run;
pub mod sink;
mod store_writer;
