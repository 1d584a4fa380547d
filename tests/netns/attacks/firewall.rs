//! See the crate docs (main.rs) for what this part covers.
