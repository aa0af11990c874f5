//! The simulated xenstored.
