//! Where messages come from.

pub mod mqtt;
pub mod kafka;
