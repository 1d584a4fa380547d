//! Port mapping gateways: UPnP IGD (through `igd-next`, found by SSDP or
//! the configured URL), NAT-PMP and PCP, the UDP exchanges they share, and
//! the STUN query for the public address.

use super::*;

/// A port mapping gateway: UPnP IGD, or NAT-PMP at the default gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gateway {
    Upnp {
        service: upnp::Service,
        /// This router's address towards it (the mappings' internal client).
        me: Ipv4Addr,
    },
    Pmp(SocketAddr),
}

/// Why a mapping call failed (the text `igd-next` or the NAT-PMP reader
/// gave, at most 200 characters).
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The gateway answered no (this port).
    #[error("{0}")]
    Refused(String),
    /// No answer or a broken one (the gateway, not the port).
    #[error("{0}")]
    Gone(String),
}

impl MapError {
    /// A request that failed: a UPnP error code is the gateway's answer
    /// (this port), anything else (no answer, not SOAP) the gateway's fault.
    pub(super) fn of(e: igd_next::RequestError) -> MapError {
        match e {
            igd_next::RequestError::ErrorCode(..)
            | igd_next::RequestError::UnsupportedAction(_) => MapError::refused(&e),
            e => MapError::Gone(short(&e)),
        }
    }

    /// The gateway said no (`e`: `igd-next`'s reading of its UPnP error).
    pub(super) fn refused(e: &dyn std::fmt::Display) -> MapError {
        MapError::Refused(format!("refused by the gateway: {}", short(e)))
    }
}

impl Gateway {
    /// UPnP (SSDP, or `url`); without an answer and without `url`, NAT-PMP
    /// at the default gateway.
    pub(super) fn find(url: Option<&Url>) -> Result<Gateway, TraversalError> {
        let upnp = find_gateway(url).and_then(|service| {
            let me = local_ip_towards(&service.control).map_err(TraversalError::LocalAddress)?;
            Ok(Gateway::Upnp { service, me })
        });
        match upnp {
            Ok(g) => Ok(g),
            Err(e) if url.is_some() => Err(e),
            Err(e) => {
                let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
                let upnp = Box::new(e);
                let Some(gateway) = natpmp::default_gateway(&route) else {
                    return Err(TraversalError::NoPmpGateway { upnp });
                };
                let g = Gateway::Pmp(SocketAddr::from((gateway, natpmp::PORT)));
                match g.external_ip() {
                    Ok(_) => Ok(g),
                    Err(pmp) => Err(TraversalError::PmpFailed { upnp, gateway, pmp }),
                }
            }
        }
    }

    pub(super) fn name(&self) -> String {
        match self {
            Gateway::Upnp { service, .. } => service.control.to_string(),
            Gateway::Pmp(a) => format!("natpmp://{a}"),
        }
    }

    pub(super) fn external_ip(&self) -> Result<IpAddr, MapError> {
        match self {
            Gateway::Upnp { service, .. } => match soap_gateway(service)?.get_external_ip() {
                Ok(ip) => Ok(ip),
                Err(igd_next::GetExternalIpError::RequestError(e)) => Err(MapError::of(e)),
                Err(e) => Err(MapError::refused(&e)),
            },
            Gateway::Pmp(gw) => {
                let b = pmp_exchange(*gw, &natpmp::address_request())?;
                natpmp::parse_address(&b)
                    .map(IpAddr::V4)
                    .map_err(|e| MapError::Gone(e.to_string()))
            }
        }
    }

    /// Maps `port` (external = internal) for `lease_s` (0: permanent).
    pub(super) fn map(&self, proto: Protocol, port: u16, lease_s: u32) -> Result<(), MapError> {
        match self {
            Gateway::Upnp { service, me } => {
                let gw = soap_gateway(service)?;
                let to = SocketAddr::from((*me, port));
                let add = |lease| gw.add_port(proto.into(), port, to, lease, DESCRIPTION);
                match add(lease_s) {
                    Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) => add(0),
                    r => r,
                }
                .map_err(|e| match e {
                    igd_next::AddPortError::RequestError(e) => MapError::of(e),
                    e => MapError::refused(&e),
                })
            }
            Gateway::Pmp(gw) => {
                // NAT-PMP has no permanent leases: a day, renewed like others.
                let lifetime = if lease_s == 0 { 86_400 } else { lease_s };
                let req = natpmp::map_request(proto, port, port, lifetime);
                let b = pmp_exchange(*gw, &req)?;
                match natpmp::parse_map(&b, proto, port) {
                    Ok(m) if m.external == port => Ok(()),
                    Ok(m) => {
                        // Another external port is of no use: grants name the port.
                        let _ = pmp_exchange(*gw, &natpmp::map_request(proto, port, 0, 0));
                        Err(MapError::Refused(format!(
                            "NAT-PMP gave external port {} instead",
                            m.external
                        )))
                    }
                    Err(e @ natpmp::PmpError::Refused(..)) => Err(MapError::Refused(e.to_string())),
                    Err(e) => Err(MapError::Gone(e.to_string())),
                }
            }
        }
    }

    pub(super) fn unmap(&self, proto: Protocol, port: u16) -> Result<(), MapError> {
        match self {
            Gateway::Upnp { service, .. } => {
                match soap_gateway(service)?.remove_port(proto.into(), port) {
                    Ok(()) | Err(igd_next::RemovePortError::NoSuchPortMapping) => Ok(()),
                    Err(igd_next::RemovePortError::RequestError(e)) => Err(MapError::of(e)),
                    Err(e) => Err(MapError::refused(&e)),
                }
            }
            Gateway::Pmp(gw) => {
                let b = pmp_exchange(*gw, &natpmp::map_request(proto, port, 0, 0))?;
                natpmp::parse_map(&b, proto, port)
                    .map(drop)
                    .map_err(|e| MapError::Refused(e.to_string()))
            }
        }
    }
}

/// The lifetime asked for pinholes: the lease, within what PCP servers
/// grant (miniupnpd: at least 120 s; a day for "permanent").
pub(super) fn pcp_lifetime(lease_s: u32) -> u32 {
    if lease_s == 0 {
        86_400
    } else {
        lease_s.clamp(120, 86_400)
    }
}

/// Why a PCP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum PcpFailure {
    /// The server answered no (this port).
    #[error("{0}")]
    Refused(String),
    /// No answer, or not a PCP server.
    #[error("{0}")]
    Gone(String),
}

impl From<pcp::PcpError> for PcpFailure {
    fn from(e: pcp::PcpError) -> Self {
        match e {
            pcp::PcpError::Refused(..) => PcpFailure::Refused(e.to_string()),
            e => PcpFailure::Gone(e.to_string()),
        }
    }
}

/// One PCP exchange from `me`.
pub(super) fn pcp_exchange(
    server: SocketAddr,
    me: Ipv6Addr,
    req: &[u8],
) -> Result<Vec<u8>, PcpFailure> {
    let gone = |e: io::Error| PcpFailure::Gone(format!("PCP {server}: {e}"));
    let mut buf = [0u8; pcp::MAX_MESSAGE + 1];
    match udp_exchange(SocketAddr::new(IpAddr::V6(me), 0), server, req, &mut buf) {
        Ok(Some(n)) => Ok(buf[..n].to_vec()),
        Ok(None) => Err(PcpFailure::Gone(format!("PCP {server}: no answer"))),
        Err(e) => Err(gone(e)),
    }
}

/// One request from `local` to `server` and its answer, with
/// retransmissions (250 ms doubling, 4 tries, as NAT-PMP and PCP say);
/// `None`: no answer.
pub(super) fn udp_exchange(
    local: SocketAddr,
    server: SocketAddr,
    req: &[u8],
    buf: &mut [u8],
) -> io::Result<Option<usize>> {
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    let mut wait = Duration::from_millis(250);
    for _ in 0..4 {
        sock.send(req)?;
        sock.set_read_timeout(Some(wait))?;
        match sock.recv(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                wait *= 2
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// This router's global IPv6 address on its default route (a route lookup:
/// connect() on UDP sends nothing).
pub(super) fn global_ip6() -> Option<Ipv6Addr> {
    let s = UdpSocket::bind("[::]:0").ok()?;
    s.connect("[2001:db8::1]:9").ok()?;
    match s.local_addr().ok()?.ip() {
        IpAddr::V6(a) if (a.segments()[0] & 0xe000) == 0x2000 => Some(a),
        _ => None,
    }
}

/// One NAT-PMP exchange.
pub(super) fn pmp_exchange(gw: SocketAddr, req: &[u8]) -> Result<Vec<u8>, MapError> {
    let mut buf = [0u8; 64];
    match udp_exchange(SocketAddr::from(([0, 0, 0, 0], 0)), gw, req, &mut buf) {
        Ok(Some(n)) => Ok(buf[..n].to_vec()),
        Ok(None) => Err(MapError::Gone(format!("NAT-PMP {gw}: no answer"))),
        Err(e) => Err(MapError::Gone(format!("NAT-PMP {gw}: {e}"))),
    }
}

/// The input arguments of the two actions called, in the order of the IGD
/// specification (WANIPConnection:1 §2.4.16 and §2.4.17; the same in v2 and
/// WANPPPConnection). `igd-next` writes a request's arguments from this
/// list; its `search_gateway` would read them from the gateway's SCPD.
pub(super) const ARGUMENTS: [(&str, &[&str]); 2] = [
    (
        "AddPortMapping",
        &[
            "NewRemoteHost",
            "NewExternalPort",
            "NewProtocol",
            "NewInternalPort",
            "NewInternalClient",
            "NewEnabled",
            "NewPortMappingDescription",
            "NewLeaseDuration",
        ],
    ),
    (
        "DeletePortMapping",
        &["NewRemoteHost", "NewExternalPort", "NewProtocol"],
    ),
];

/// `igd-next`'s handle on the gateway's `service`: SOAP calls go to the
/// control URL's address (a name, from `option upnp_url`, resolved here) and
/// nowhere else. The control URL is handed over absolute, with that address
/// as its host: `igd-next` resolves it against `http://addr/`, where a path
/// starting with `//` would name another host.
pub(super) fn soap_gateway(service: &upnp::Service) -> Result<igd_next::Gateway, MapError> {
    let c = &service.control;
    let addr = (c.host.as_str(), c.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| MapError::Gone(format!("{c}: cannot resolve {}", c.host)))?;
    let control_schema = ARGUMENTS
        .iter()
        .map(|(action, args)| {
            let args = args.iter().map(|a| (*a).to_owned()).collect();
            ((*action).to_owned(), args)
        })
        .collect();
    Ok(igd_next::Gateway {
        addr,
        root_url: "/".into(),
        control_url: format!("http://{addr}{}", c.path),
        control_schema_url: String::new(),
        control_schema,
        service_type: service.kind.clone(),
    })
}

/// An error's text, at most 200 characters (`igd-next` puts a gateway's
/// whole answer into some).
pub(super) fn short(e: &dyn std::fmt::Display) -> String {
    let t = e.to_string();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &t[..i]),
        None => t,
    }
}

/// SSDP discovery (or the configured URL), then the description, fetched
/// without following redirects; its control URL must be on the host the
/// description came from (the URL SOAP calls go to, which follow no
/// redirects either).
pub(super) fn find_gateway(url: Option<&Url>) -> Result<upnp::Service, TraversalError> {
    let location = match url {
        Some(u) => u.clone(),
        None => {
            let route = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
            let gw = natpmp::default_gateway(&route).ok_or(TraversalError::NoDefaultGateway)?;
            discover(gw)?
        }
    };
    let limits = http::Limits {
        timeout: GATEWAY_TIMEOUT,
        max_body: upnp::MAX_DESCRIPTION,
    };
    let r = http::get_only(&location, &[], limits).map_err(TraversalError::Description)?;
    if r.status != 200 {
        let redirect = r.location.filter(|_| (300..400).contains(&r.status));
        return Err(TraversalError::DescriptionStatus {
            location,
            status: r.status,
            redirect,
        });
    }
    let xml = String::from_utf8_lossy(&r.body);
    let s = match upnp::parse_description(&xml, &location) {
        Ok(s) => s,
        Err(source) => return Err(TraversalError::BadDescription { location, source }),
    };
    if !same_host(&s.control, &location) {
        let control = s.control;
        return Err(TraversalError::ForeignControl { location, control });
    }
    Ok(s)
}

/// Searches for IGDs; only an answer from the default gateway `gateway`,
/// whose description is on that gateway, is taken: another LAN host must not
/// steer the router's requests (and its port mappings) elsewhere.
pub(super) fn discover(gateway: Ipv4Addr) -> Result<Url, TraversalError> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(TraversalError::DiscoverySocket)?;
    let _ = sock.set_multicast_ttl_v4(2);
    let group = SocketAddr::from((Ipv4Addr::new(239, 255, 255, 250), 1900));
    for target in upnp::SEARCH_TARGETS {
        sock.send_to(upnp::msearch(target).as_bytes(), group)
            .map_err(TraversalError::DiscoverySend)?;
    }
    let deadline = Instant::now() + SSDP_WAIT;
    let mut buf = [0u8; 2048];
    let mut last = TraversalError::GatewaySilent(gateway);
    let mut foreign = false;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(TraversalError::DiscoverySocket)?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => match ssdp_location(&buf[..n], from, gateway) {
                Ok(u) => return Ok(u),
                Err(Ssdp::NotTheGateway) => {
                    if !foreign {
                        log::warn!(
                            "traversal: ignored an SSDP answer from {from}: not the default gateway {gateway}"
                        );
                        foreign = true;
                    }
                }
                Err(Ssdp::Bad(why)) => last = TraversalError::BadSsdp { from, why },
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(TraversalError::DiscoverySocket(e)),
        }
    }
    Err(last)
}

/// Why an SSDP answer is not taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ssdp {
    /// It did not come from the default gateway.
    NotTheGateway,
    /// The gateway's answer is unusable (why).
    Bad(String),
}

/// The description URL in SSDP answer `b` from `from`, when `from` is the
/// default gateway `gateway` and the URL names it by that address.
pub(super) fn ssdp_location(b: &[u8], from: SocketAddr, gateway: Ipv4Addr) -> Result<Url, Ssdp> {
    if from.ip() != IpAddr::V4(gateway) {
        return Err(Ssdp::NotTheGateway);
    }
    let u = upnp::parse_ssdp(b).map_err(|e| Ssdp::Bad(e.to_string()))?;
    if !on_host(&u, from.ip()) {
        return Err(Ssdp::Bad(format!("LOCATION {u} is on another host")));
    }
    Ok(u)
}

/// Whether `url` names the host with address `ip` (the gateway that
/// answered) by that address.
pub(super) fn on_host(url: &Url, ip: IpAddr) -> bool {
    url.host.parse::<IpAddr>().is_ok_and(|h| h == ip)
}

/// Whether `a` and `b` name the same host (addresses compared as
/// addresses, names as names).
pub(super) fn same_host(a: &Url, b: &Url) -> bool {
    match (a.host.parse::<IpAddr>(), b.host.parse::<IpAddr>()) {
        (Ok(x), Ok(y)) => x == y,
        (Err(_), Err(_)) => a.host.eq_ignore_ascii_case(&b.host),
        _ => false,
    }
}

/// This router's IPv4 address on the route to `url`'s host (no packet sent).
pub(super) fn local_ip_towards(url: &Url) -> io::Result<Ipv4Addr> {
    let target = (url.host.as_str(), url.port)
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no IPv4 address"))?;
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.connect(target)?;
    match s.local_addr()?.ip() {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(_) => Err(io::Error::new(io::ErrorKind::Unsupported, "IPv6")),
    }
}

/// Asks one STUN server from `sock`: what it saw, and this router's address
/// on the route to it.
pub(super) fn ask_stun(
    sock: &UdpSocket,
    server: &str,
) -> Result<(SocketAddr, Option<IpAddr>), StunFailure> {
    let addr = server
        .to_socket_addrs()
        .map_err(StunFailure::Resolve)?
        .find(SocketAddr::is_ipv4)
        .ok_or(StunFailure::NoIpv4)?;
    let local = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect(addr).and_then(|()| s.local_addr()))
        .ok()
        .map(|a| a.ip());
    let mut tid = [0u8; 12];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut tid))
        .map_err(StunFailure::Random)?;
    let req = stun::request(tid);
    let mut buf = [0u8; stun::MAX_MESSAGE];
    let mut last = None;
    for wait in STUN_TRIES {
        sock.send_to(&req, addr).map_err(StunFailure::Send)?;
        let deadline = Instant::now() + wait;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == addr => match stun::parse_response(&buf[..n], &tid) {
                    Ok(seen) => return Ok((seen, local)),
                    Err(stun::StunError::OtherTransaction) => {}
                    Err(e) => last = Some(e),
                },
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Err(StunFailure::NoAnswer {
        last,
        tries: STUN_TRIES.len(),
    })
}
