//! The library side of the `m2m` binary: its configuration file, so that tools and tests outside
//! the binary (the fuzz targets in `fuzz/`) parse and validate a configuration exactly as `m2m node`
//! does.
//!
//! Everything else the binary does (the subcommands, wiring a node together) stays in `main.rs`.

// The sections' fields are the file's keys, documented for users in the README's configuration
// tables; a field has a doc comment here where it says more than its key.
#[allow(missing_docs)]
pub mod config;
