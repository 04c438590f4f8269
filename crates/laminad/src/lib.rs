//! The parts of laminad other programs build on: its configuration file format, shared by
//! the daemon and the fuzz target that feeds it hostile input.

pub mod config;
