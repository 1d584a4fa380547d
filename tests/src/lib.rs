//! Topology harness.
