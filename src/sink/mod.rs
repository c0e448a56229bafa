//! Destinations of the pipeline.

pub mod kafka;
