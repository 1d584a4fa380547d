//! The client role: path-manager decisions (pure) — which detours to ask for, when to
//! create, keep or drop subflows. Netlink lives in `sys::mptcp_pm`; the MPTCP
//! vocabulary it decodes into (events, tokens, address ids) in [`crate::mptcp`].

mod core;
pub mod fallback;
pub mod strategy;

pub use self::core::{
    Action, Client, Conn, DatagramError, Detour, DetourState, PeerSpec, PeerStatus, Settings,
    DETOUR_LOCAL_ID,
};
pub use self::core::{VpnPeer, VpnState};
