//! DCol, the Detour Collective: MPTCP detours through other members' routers.
//!
//! Pure protocol and policy code lives in [`proto`], [`trust`], [`waypoint`] and
//! [`client`]: state machines that take `now`, bytes and events in and hand actions
//! out. [`mptcp`] holds the MPTCP vocabulary (events, tokens, address ids,
//! subflow counters) that `sys` decodes into and `client` consumes. Everything that touches the kernel lives in [`sys`]; [`daemon`] wires the two.
#![deny(unsafe_code)]

pub mod client;
pub mod config;
pub mod control;
pub mod convert;
pub mod daemon;
pub mod directory;
pub mod http;
pub mod loglimit;
pub mod member;
pub mod mptcp;
pub mod proto;
pub mod proxy;
pub mod routes;
pub mod special;
pub mod sys;
#[cfg(test)]
mod testutil;
pub mod traversal;
pub mod trust;
pub mod types;
pub mod waypoint;
