//! Integration tests of the store: a real fjall database on disk, in a temporary directory.

#![allow(clippy::unwrap_used)]

mod faults;
mod group_commit;
mod model;
mod recovery;
mod roundtrip;
mod support;
mod tidy;
