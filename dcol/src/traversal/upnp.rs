//! UPnP IGD discovery as far as a waypoint needs it, pure (no I/O): the SSDP
//! search and its answer, and the gateway's device description (which
//! service, where its control URL is). The SOAP calls themselves
//! (`GetExternalIPAddress`, `AddPortMapping`, `DeletePortMapping`) are
//! `igd-next`'s, on a gateway built from what was read here and checked in
//! [`super`].
//!
//! Why this part is not `igd-next`'s: the crate reads a description only
//! inside `search_gateway`, which takes the first SSDP answer from any LAN
//! host whose description is on that host, and DCol takes only its default
//! gateway's (`tests/netns/traversal.rs`,
//! `ssdp_answers_from_other_lan_hosts_are_ignored`, shows both on one LAN).
//!
//! The XML here is a small, fixed vocabulary, so it is read with a scanner
//! that finds elements by local name (namespace prefixes ignored) instead of
//! a general XML parser: no DTDs, no entities, sizes bounded by the caller.

use std::fmt;

use crate::http::{self, Url};

/// Device types searched for (IGD v1 answers most gateways; v2 the rest).
pub const SEARCH_TARGETS: [&str; 2] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
];
/// Services that can map ports, best first.
const SERVICES: [&str; 3] = [
    "urn:schemas-upnp-org:service:WANIPConnection:2",
    "urn:schemas-upnp-org:service:WANIPConnection:1",
    "urn:schemas-upnp-org:service:WANPPPConnection:1",
];
/// Largest device description read.
pub const MAX_DESCRIPTION: usize = 64 * 1024;

/// What is wrong with a gateway's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpnpError {
    /// An SSDP answer that is not an HTTP 200 with a `LOCATION`.
    Ssdp(String),
    /// The description lists no WANIPConnection/WANPPPConnection service.
    NoService,
    /// Malformed XML or a missing element (which).
    Xml(String),
}

impl fmt::Display for UpnpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpnpError::Ssdp(w) => write!(f, "SSDP answer: {w}"),
            UpnpError::NoService => f.write_str("the gateway offers no port mapping service"),
            UpnpError::Xml(w) => write!(f, "gateway XML: {w}"),
        }
    }
}

impl std::error::Error for UpnpError {}

/// An SSDP M-SEARCH for `target`.
pub fn msearch(target: &str) -> String {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: 1\r\nST: {target}\r\n\r\n"
    )
}

/// The description URL (`LOCATION`) in an SSDP answer.
pub fn parse_ssdp(b: &[u8]) -> Result<Url, UpnpError> {
    let (head, _) = http::wire::parse_head(b)
        .map_err(|e| UpnpError::Ssdp(e.to_string()))?
        .ok_or_else(|| UpnpError::Ssdp("incomplete head".into()))?;
    if head.first != "HTTP/1.1" || head.second != "200" {
        return Err(UpnpError::Ssdp(format!(
            "'{} {}' is not an answer",
            head.first, head.second
        )));
    }
    let loc = head
        .field("location")
        .ok_or_else(|| UpnpError::Ssdp("no LOCATION".into()))?;
    Url::parse(loc).map_err(|e| UpnpError::Ssdp(e.to_string()))
}

/// The port mapping service of a gateway: its type and control URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// E.g. `urn:schemas-upnp-org:service:WANIPConnection:1`.
    pub kind: String,
    /// Where SOAP calls go.
    pub control: Url,
}

/// Finds the best port mapping service in a device description fetched from
/// `base`.
pub fn parse_description(xml: &str, base: &Url) -> Result<Service, UpnpError> {
    let base = match element(xml, "URLBase")? {
        Some(b) if !b.trim().is_empty() => {
            Url::parse(b.trim()).map_err(|e| UpnpError::Xml(format!("URLBase: {e}")))?
        }
        _ => base.clone(),
    };
    let mut found: Option<(usize, String, String)> = None;
    let mut rest = xml;
    while let Some((inner, after)) = next_element(rest, "service")? {
        rest = after;
        let kind = element(inner, "serviceType")?.unwrap_or_default();
        let Some(rank) = SERVICES.iter().position(|s| *s == kind.trim()) else {
            continue;
        };
        let Some(control) = element(inner, "controlURL")? else {
            continue;
        };
        if found.as_ref().is_none_or(|(r, _, _)| rank < *r) {
            found = Some((rank, kind.trim().to_owned(), control.trim().to_owned()));
        }
    }
    let (_, kind, mut control) = found.ok_or(UpnpError::NoService)?;
    if !control.starts_with('/') && !control.starts_with("http://") {
        // Relative to the description's directory.
        let dir = base.path.rsplit_once('/').map_or("", |(d, _)| d);
        control = format!("{dir}/{control}");
    }
    let control = base
        .join(&control)
        .map_err(|e| UpnpError::Xml(format!("controlURL '{control}': {e}")))?;
    Ok(Service { kind, control })
}

/// Transport protocol of a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// As UPnP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl From<Protocol> for igd_next::PortMappingProtocol {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => igd_next::PortMappingProtocol::TCP,
            Protocol::Udp => igd_next::PortMappingProtocol::UDP,
        }
    }
}

/// The content of the first element with local name `name` (any prefix), or
/// `None` when there is none.
fn element<'a>(xml: &'a str, name: &str) -> Result<Option<&'a str>, UpnpError> {
    Ok(next_element(xml, name)?.map(|(inner, _)| inner))
}

/// The first element `name`: its content and the text after it.
fn next_element<'a>(xml: &'a str, name: &str) -> Result<Option<(&'a str, &'a str)>, UpnpError> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<').map(|i| i + from) {
        let tag_end = xml[i..]
            .find('>')
            .map(|j| i + j)
            .ok_or_else(|| UpnpError::Xml(format!("unterminated tag at byte {i}")))?;
        let tag = &xml[i + 1..tag_end];
        from = tag_end + 1;
        if tag.starts_with(['/', '?', '!']) {
            continue;
        }
        let tag_name = tag
            .split(|c: char| c.is_ascii_whitespace() || c == '/')
            .next()
            .unwrap_or_default();
        if local(tag_name) != name {
            continue;
        }
        if tag.ends_with('/') {
            return Ok(Some(("", &xml[from..])));
        }
        // The matching end tag, counting nested elements of the same name.
        let mut depth = 1;
        let mut at = from;
        while let Some(j) = xml[at..].find('<').map(|j| j + at) {
            let end = xml[j..]
                .find('>')
                .map(|k| j + k)
                .ok_or_else(|| UpnpError::Xml(format!("unterminated tag at byte {j}")))?;
            let t = &xml[j + 1..end];
            at = end + 1;
            let closing = t.starts_with('/');
            let n = t
                .trim_start_matches('/')
                .split(|c: char| c.is_ascii_whitespace() || c == '/')
                .next()
                .unwrap_or_default();
            if local(n) != name || t.starts_with(['?', '!']) || (!closing && t.ends_with('/')) {
                continue;
            }
            depth += if closing { -1 } else { 1 };
            if depth == 0 {
                return Ok(Some((&xml[from..j], &xml[at..])));
            }
        }
        return Err(UpnpError::Xml(format!("<{tag_name}> is not closed")));
    }
    Ok(None)
}

fn local(name: &str) -> &str {
    name.rsplit(':').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// miniupnpd 2.3.1's description (Debian), trimmed to its structure.
    const DESC: &str = r#"<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" configId="1337"><specVersion><major>1</major><minor>1</minor></specVersion><device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:2</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:Layer3Forwarding:1</serviceType><serviceId>urn:upnp-org:serviceId:L3Forwarding1</serviceId><SCPDURL>/L3F.xml</SCPDURL><controlURL>/ctl/L3F</controlURL><eventSubURL>/evt/L3F</eventSubURL></service></serviceList><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:2</deviceType><deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:2</deviceType><serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId><SCPDURL>/WANIPCn.xml</SCPDURL><controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL></service><service><serviceType>urn:schemas-upnp-org:service:WANIPv6FirewallControl:1</serviceType><controlURL>/ctl/IP6FCtl</controlURL></service></serviceList></device></deviceList></device></deviceList></device></root>"#;

    fn base() -> Url {
        Url::parse("http://192.168.7.1:5000/rootDesc.xml").unwrap()
    }

    #[test]
    fn ssdp_answer() {
        let a = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: http://192.168.7.1:5000/rootDesc.xml\r\nEXT:\r\n\r\n";
        assert_eq!(parse_ssdp(a).unwrap(), base());
        assert!(parse_ssdp(b"NOTIFY * HTTP/1.1\r\nLOCATION: http://x/\r\n\r\n").is_err());
        assert!(parse_ssdp(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n").is_err());
        assert!(parse_ssdp(b"HTTP/1.1 200 OK\r\nLOCATION: https://x/\r\n\r\n").is_err());
        assert!(parse_ssdp(b"\x00\x01garbage").is_err());
        assert!(msearch(SEARCH_TARGETS[0]).ends_with("InternetGatewayDevice:1\r\n\r\n"));
    }

    #[test]
    fn description_picks_the_ip_connection() {
        let s = parse_description(DESC, &base()).unwrap();
        assert_eq!(s.kind, "urn:schemas-upnp-org:service:WANIPConnection:2");
        assert_eq!(s.control.to_string(), "http://192.168.7.1:5000/ctl/IPConn");
        // A v1 gateway with a PPP and an IP service and a URLBase.
        let v1 = "<root><URLBase>http://10.0.0.1:80/</URLBase><service><serviceType>urn:schemas-upnp-org:service:WANPPPConnection:1</serviceType><controlURL>/ppp</controlURL></service><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>ipc</controlURL></service></root>";
        let s = parse_description(v1, &base()).unwrap();
        assert_eq!(s.kind, SERVICES[1]);
        assert_eq!(s.control.to_string(), "http://10.0.0.1:80/ipc");
        assert_eq!(
            parse_description(
                "<root><service><serviceType>x</serviceType></service></root>",
                &base()
            ),
            Err(UpnpError::NoService)
        );
        assert!(matches!(
            parse_description("<root><service><serviceType>", &base()),
            Err(UpnpError::Xml(_))
        ));
    }

    #[test]
    fn nested_elements_of_one_name() {
        let xml = "<device><x/><device><v>in</v></device><v>out</v></device>";
        let (inner, rest) = next_element(xml, "device").unwrap().unwrap();
        assert_eq!(inner, "<x/><device><v>in</v></device><v>out</v>");
        assert_eq!(rest, "");
    }
}
