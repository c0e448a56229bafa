//! The pipelines behind the subcommands: each wires sources, routing and
//! destinations together and owns shutdown.

pub mod bridge;
pub mod sink;
