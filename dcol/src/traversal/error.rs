//! What goes wrong in a traversal pass: each names what was asked of whom,
//! and keeps its cause.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use super::gateway::{MapError, PcpFailure};
use super::{stun, upnp, Protocol};
use crate::http::{HttpError, Url};

/// A problem of one pass, kept in [`super::Outcome::errors`] (the daemon logs
/// it and shows it in `dcol status`).
#[derive(Debug, thiserror::Error)]
pub enum TraversalError {
    /// No IPv4 default gateway: only it may answer the UPnP search.
    #[error("UPnP discovery: no IPv4 default gateway (only it may answer the search)")]
    NoDefaultGateway,
    /// The SSDP socket failed.
    #[error("UPnP discovery: {0}")]
    DiscoverySocket(#[source] io::Error),
    /// The SSDP search could not be sent.
    #[error("UPnP discovery: sending the search: {0}")]
    DiscoverySend(#[source] io::Error),
    /// The default gateway did not answer the search.
    #[error("UPnP discovery: the default gateway {0} did not answer")]
    GatewaySilent(Ipv4Addr),
    /// The default gateway's SSDP answer is unusable.
    #[error("UPnP discovery: {from}: {why}")]
    BadSsdp {
        /// The gateway.
        from: SocketAddr,
        /// What is wrong with the answer.
        why: String,
    },
    /// The description could not be fetched.
    #[error("UPnP description: {0}")]
    Description(#[source] HttpError),
    /// The description's server answered with another status than 200.
    #[error("UPnP description {location}: HTTP status {status}{}", redirect_note(redirect.as_deref()))]
    DescriptionStatus {
        /// The description's URL.
        location: Url,
        /// The HTTP status.
        status: u16,
        /// Where a redirect pointed (never followed).
        redirect: Option<String>,
    },
    /// The description is not an IGD's.
    #[error("{location}: {source}")]
    BadDescription {
        /// The description's URL.
        location: Url,
        /// What is wrong with it.
        source: upnp::UpnpError,
    },
    /// The control URL is on another host than the description.
    #[error("{location}: the control URL {control} is on another host")]
    ForeignControl {
        /// The description's URL.
        location: Url,
        /// The control URL it names.
        control: Url,
    },
    /// This router's address towards the gateway is unknown.
    #[error("the address towards the gateway: {0}")]
    LocalAddress(#[source] io::Error),
    /// No UPnP gateway, and no default gateway to ask with NAT-PMP.
    #[error("{upnp}; no default gateway for NAT-PMP")]
    NoPmpGateway {
        /// Why UPnP failed.
        #[source]
        upnp: Box<TraversalError>,
    },
    /// No UPnP gateway, and NAT-PMP at the default gateway failed too.
    #[error("{upnp}; NAT-PMP at {gateway}: {pmp}")]
    PmpFailed {
        /// Why UPnP failed.
        #[source]
        upnp: Box<TraversalError>,
        /// The default gateway.
        gateway: Ipv4Addr,
        /// Why NAT-PMP failed.
        pmp: MapError,
    },
    /// The gateway did not tell its external address.
    #[error("gateway {gateway}: {source}")]
    ExternalIp {
        /// The gateway's name.
        gateway: String,
        /// Why.
        source: MapError,
    },
    /// A port mapping failed.
    #[error("mapping {} {port}: {source}", proto.as_str())]
    Mapping {
        /// Its protocol.
        proto: Protocol,
        /// Its port.
        port: u16,
        /// Why.
        source: MapError,
    },
    /// No global IPv6 address on the default route.
    #[error("IPv6: no global address on the default route")]
    NoGlobal6,
    /// No IPv6 default router to ask with PCP.
    #[error("IPv6: no default router for PCP")]
    NoRouter6,
    /// The IPv6 default route's interface is gone.
    #[error("IPv6: no interface {0}")]
    NoInterface(String),
    /// A nonce could not be drawn.
    #[error("/dev/urandom: {0}")]
    Random(#[source] io::Error),
    /// A pinhole was refused.
    #[error("IPv6 pinhole {} {port}: {source}", proto.as_str())]
    Pinhole {
        /// Its protocol.
        proto: Protocol,
        /// Its port.
        port: u16,
        /// Why.
        source: PcpFailure,
    },
    /// The PCP server is gone or is none.
    #[error("IPv6 pinholes with PCP at {server}: {source}")]
    PcpGone {
        /// The server.
        server: SocketAddr,
        /// Why.
        source: PcpFailure,
    },
    /// No socket for STUN.
    #[error("STUN socket: {0}")]
    StunSocket(#[source] io::Error),
    /// A STUN server gave no usable answer.
    #[error("STUN {server}: {source}")]
    Stun {
        /// The server, as configured.
        server: String,
        /// Why.
        source: StunFailure,
    },
}

/// Why one STUN server gave no address.
#[derive(Debug, thiserror::Error)]
pub enum StunFailure {
    /// Its name does not resolve.
    #[error("{0}")]
    Resolve(#[source] io::Error),
    /// It has no IPv4 address.
    #[error("no IPv4 address")]
    NoIpv4,
    /// A transaction id could not be drawn.
    #[error("/dev/urandom: {0}")]
    Random(#[source] io::Error),
    /// The request could not be sent.
    #[error("{0}")]
    Send(#[source] io::Error),
    /// No usable answer to any try (`last`: the last unusable one).
    #[error("{} after {tries} tries", last.as_ref().map_or("no answer".to_owned(), |e| e.to_string()))]
    NoAnswer {
        /// The last unusable answer, if any.
        #[source]
        last: Option<stun::StunError>,
        /// How many requests were sent.
        tries: usize,
    },
}

fn redirect_note(to: Option<&str>) -> String {
    to.map(|to| format!(" (a redirect to {}: not followed)", to.escape_debug()))
        .unwrap_or_default()
}
