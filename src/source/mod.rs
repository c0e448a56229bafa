//! Where messages come from.

pub mod kafka;
pub mod mqtt;
