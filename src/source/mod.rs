//! Where messages come from.

pub mod mqtt;
