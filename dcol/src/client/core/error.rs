//! Why a datagram from a waypoint is not acted on.

use std::net::SocketAddr;

use crate::proto::{RefusalReason, WireError};
use crate::trust::TrustError;

/// Why [`super::Client::on_datagram`] ignored a datagram; each names the
/// sender. The driver logs it (rate-limited) and goes on.
#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    /// A request, sent to the client's port.
    #[error("{from}: a request sent to the client")]
    Request {
        /// The sender.
        from: SocketAddr,
    },
    /// An unsigned refusal: anyone can forge one, so it changes nothing.
    #[error("{from}: unsigned refusal ({reason}); not acted on: anyone can forge one")]
    UnsignedRefusal {
        /// The sender.
        from: SocketAddr,
        /// The reason it gives.
        reason: RefusalReason,
    },
    /// Not a DCol message.
    #[error("{from}: undecodable datagram: {source}")]
    Undecodable {
        /// The sender.
        from: SocketAddr,
        /// Why it does not decode.
        source: WireError,
    },
    /// Its nonce is no pending request's (late or forged).
    #[error("{from}: response to no pending request (late or forged)")]
    NotPending {
        /// The sender.
        from: SocketAddr,
    },
    /// The request went to another address.
    #[error("{from}: response for a request sent to {to}")]
    WrongSender {
        /// The sender.
        from: SocketAddr,
        /// Where the request went.
        to: SocketAddr,
    },
    /// The waypoint's certificate or the response's signature does not hold.
    #[error("{from}: waypoint certificate or signature: {source}")]
    Untrusted {
        /// The sender.
        from: SocketAddr,
        /// What fails.
        source: TrustError,
    },
    /// Signed by another member than the configured NAT waypoint.
    #[error("{from}: answered as '{name}', configured as '{configured}'")]
    WrongName {
        /// The sender.
        from: SocketAddr,
        /// The certificate's name.
        name: String,
        /// The configured waypoint's name.
        configured: String,
    },
    /// The certificate lacks the waypoint role.
    #[error("{from}: '{name}' lacks the waypoint role")]
    NotAWaypoint {
        /// The sender.
        from: SocketAddr,
        /// The certificate's name.
        name: String,
    },
    /// A VPN answer signed by another member than the configured waypoint,
    /// or by one without the waypoint role.
    #[error("{from}: answered as '{name}', not the configured waypoint")]
    NotTheVpnWaypoint {
        /// The sender.
        from: SocketAddr,
        /// The certificate's name.
        name: String,
    },
}
