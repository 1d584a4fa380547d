//! The client role: path-manager decisions (pure) — which detours to ask for, when to
//! create, keep or drop subflows. Netlink lives in `sys::mptcp_pm`.

mod event;

pub use event::PmEvent;
