use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn gateway_urls_must_stay_on_the_gateway() {
    let gw: IpAddr = "192.168.7.1".parse().unwrap();
    let u = |s: &str| Url::parse(s).unwrap();
    assert!(on_host(&u("http://192.168.7.1:5000/rootDesc.xml"), gw));
    assert!(!on_host(&u("http://192.168.7.9:5000/rootDesc.xml"), gw));
    assert!(!on_host(&u("http://gateway.lan:5000/rootDesc.xml"), gw));
    let desc = u("http://192.168.7.1:5000/rootDesc.xml");
    assert!(same_host(&u("http://192.168.7.1:6000/ctl/IPConn"), &desc));
    assert!(!same_host(&u("http://192.168.7.9:5000/ctl/IPConn"), &desc));
    assert!(!same_host(&u("http://gw.lan:5000/ctl/IPConn"), &desc));
    assert!(same_host(
        &u("http://[fe80::0:1]/c"),
        &u("http://[fe80::1]:80/d")
    ));
    assert!(same_host(&u("http://GW.lan/c"), &u("http://gw.lan/d")));
}

#[test]
fn ssdp_answers_only_from_the_default_gateway() {
    let gw = Ipv4Addr::new(192, 168, 7, 1);
    let answer = |loc: &str| {
        format!("HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: {loc}\r\n\r\n")
            .into_bytes()
    };
    let good = answer("http://192.168.7.1:5000/rootDesc.xml");
    assert_eq!(
        ssdp_location(&good, sa("192.168.7.1:1900"), gw),
        Ok(Url::parse("http://192.168.7.1:5000/rootDesc.xml").unwrap())
    );
    // Another LAN host, even naming itself or the gateway: ignored.
    let rogue = answer("http://192.168.7.66:5000/rootDesc.xml");
    assert_eq!(
        ssdp_location(&rogue, sa("192.168.7.66:1900"), gw),
        Err(Ssdp::NotTheGateway)
    );
    assert_eq!(
        ssdp_location(&good, sa("192.168.7.66:1900"), gw),
        Err(Ssdp::NotTheGateway)
    );
    // The gateway pointing elsewhere, or garbage from it: unusable.
    assert!(matches!(
        ssdp_location(&rogue, sa("192.168.7.1:1900"), gw),
        Err(Ssdp::Bad(e)) if e.contains("on another host")
    ));
    assert!(matches!(
        ssdp_location(b"garbage", sa("192.168.7.1:1900"), gw),
        Err(Ssdp::Bad(_))
    ));
}

/// The requests a [`serve`] server got: method, target, `SOAPAction`
/// and body, one string each.
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// Serves `replies` on loopback, one connection each, in order; records
/// the requests it got.
fn serve(replies: Vec<String>) -> (SocketAddr, Seen) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Seen::default();
    let log = Arc::clone(&seen);
    thread::spawn(move || {
        for r in replies {
            let Ok((mut c, _)) = l.accept() else { return };
            let line = match http::read_request(&mut c, 1 << 16, Duration::from_secs(5)) {
                Ok((h, body)) => format!(
                    "{} {} {} {}",
                    h.first,
                    h.second,
                    h.field("soapaction").unwrap_or("-"),
                    String::from_utf8_lossy(&body)
                ),
                Err(e) => format!("unreadable: {e}"),
            };
            log.lock().unwrap().push(line);
            let _ = c.write_all(r.as_bytes());
        }
    });
    (addr, seen)
}

fn ok(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn description(control: &str) -> String {
    format!("<root><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>{control}</controlURL></service></root>")
}

#[test]
fn the_description_is_fetched_without_redirects() {
    // A second server with a valid description, where the gateway
    // redirects to: never asked.
    let (elsewhere, asked) = serve(vec![ok(&description("/ctl")); 2]);
    let target = format!("http://{elsewhere}/rootDesc.xml");
    let (gw, _) = serve(vec![format!(
        "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n"
    )]);
    let url = Url::parse(&format!("http://{gw}/rootDesc.xml")).unwrap();
    let e = find_gateway(Some(&url)).unwrap_err().to_string();
    assert!(e.contains("HTTP status 302"), "{e}");
    assert!(
        e.contains(&format!("a redirect to {target}: not followed")),
        "{e}"
    );
    assert!(
        asked.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
    // Without a redirect the same description is taken.
    let s = find_gateway(Some(&Url::parse(&target).unwrap())).unwrap();
    assert_eq!(s.control.to_string(), format!("http://{elsewhere}/ctl"));
}

#[test]
fn the_control_url_must_be_on_the_gateway() {
    for control in ["http://127.0.0.2:5000/ctl", "http://gateway.example/ctl"] {
        let (gw, _) = serve(vec![ok(&description(control))]);
        let url = Url::parse(&format!("http://{gw}/rootDesc.xml")).unwrap();
        let e = find_gateway(Some(&url)).unwrap_err().to_string();
        let shown = Url::parse(control).unwrap();
        assert!(
            e.contains(&format!("the control URL {shown} is on another host")),
            "{e}"
        );
    }
    // A URLBase elsewhere moves a relative control URL with it.
    let (gw, _) = serve(vec![ok(
        "<root><URLBase>http://127.0.0.3:80/</URLBase><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><controlURL>/ctl</controlURL></service></root>",
    )]);
    let url = Url::parse(&format!("http://{gw}/rootDesc.xml")).unwrap();
    let e = find_gateway(Some(&url)).unwrap_err().to_string();
    assert!(e.contains("is on another host"), "{e}");
}

/// A SOAP answer: `inner` in the body, status 200.
fn soap_ok(inner: &str) -> String {
    ok(&format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body>{inner}</s:Body></s:Envelope>"
    ))
}

/// A SOAP fault with UPnP error `code` (status 500, as miniupnpd sends it).
fn soap_fault(code: u16, what: &str) -> String {
    let body = format!(
        "<?xml version=\"1.0\"?><s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns=\"urn:schemas-upnp-org:control-1-0\"><errorCode>{code}</errorCode><errorDescription>{what}</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>"
    );
    format!(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/xml\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The SOAP calls, made by `igd-next` on the gateway built from the
/// checked description: the right actions and arguments to the control
/// URL, a permanent lease where only that is taken, a missing mapping
/// deleted, a refusal kept apart from a gateway that is gone, and a
/// redirect not followed.
#[test]
fn soap_calls_through_igd_next() {
    const KIND: &str = "urn:schemas-upnp-org:service:WANIPConnection:1";
    let (elsewhere, asked) = serve(vec![soap_ok(""); 1]);
    let (gw, seen) = serve(vec![
        soap_ok(&format!("<u:GetExternalIPAddressResponse xmlns:u=\"{KIND}\"><NewExternalIPAddress>11.7.1.1</NewExternalIPAddress></u:GetExternalIPAddressResponse>")),
        soap_fault(725, "OnlyPermanentLeasesSupported"),
        soap_ok(&format!("<u:AddPortMappingResponse xmlns:u=\"{KIND}\"/>")),
        soap_fault(718, "ConflictInMappingEntry"),
        soap_fault(714, "NoSuchEntryInArray"),
        "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot here.".into(),
        format!("HTTP/1.1 307 Moved\r\nLocation: http://{elsewhere}/ctl\r\nContent-Length: 0\r\n\r\n"),
    ]);
    let g = Gateway::Upnp {
        service: upnp::Service {
            kind: KIND.into(),
            control: Url::parse(&format!("http://{gw}/ctl/IPConn")).unwrap(),
        },
        me: Ipv4Addr::new(192, 168, 7, 2),
    };
    assert_eq!(g.external_ip().ok(), Some("11.7.1.1".parse().unwrap()));
    assert!(g.map(Protocol::Udp, 7447, 3600).is_ok());
    assert!(
        matches!(g.map(Protocol::Tcp, 40000, 3600), Err(MapError::Refused(e)) if e.contains("refused by the gateway: The requested mapping conflicts"))
    );
    assert!(g.unmap(Protocol::Udp, 7447).is_ok());
    assert!(matches!(
        g.unmap(Protocol::Udp, 7447),
        Err(MapError::Gone(_))
    ));
    assert!(matches!(
        g.unmap(Protocol::Udp, 7447),
        Err(MapError::Gone(_))
    ));
    assert!(
        asked.lock().unwrap().is_empty(),
        "a SOAP redirect was followed"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "{seen:#?}");
    let action = |i: usize, a: &str| {
        assert!(
            seen[i].starts_with(&format!("POST /ctl/IPConn \"{KIND}#{a}\"")),
            "{i}: {}",
            seen[i]
        );
    };
    action(0, "GetExternalIPAddress");
    for i in 1..=3 {
        action(i, "AddPortMapping");
    }
    action(4, "DeletePortMapping");
    for want in [
        "<NewExternalPort>7447</NewExternalPort>",
        "<NewProtocol>UDP</NewProtocol>",
        "<NewInternalPort>7447</NewInternalPort>",
        "<NewInternalClient>192.168.7.2</NewInternalClient>",
        "<NewPortMappingDescription>dcol waypoint</NewPortMappingDescription>",
        "<NewLeaseDuration>3600</NewLeaseDuration>",
    ] {
        assert!(seen[1].contains(want), "{want} not in {}", seen[1]);
    }
    assert!(
        seen[2].contains("<NewLeaseDuration>0</NewLeaseDuration>"),
        "{}",
        seen[2]
    );
    assert!(
        seen[4].contains("<NewExternalPort>7447</NewExternalPort>"),
        "{}",
        seen[4]
    );
}

/// A control URL whose path starts with `//` (from the gateway's own
/// description) still sends SOAP to the gateway: the path is not taken
/// for another host.
#[test]
fn soap_stays_on_the_control_urls_host() {
    let (other, asked) = serve(vec![soap_ok(""); 1]);
    let (gw, seen) = serve(vec![soap_fault(606, "Action not authorized")]);
    let service = upnp::Service {
        kind: "urn:schemas-upnp-org:service:WANIPConnection:1".into(),
        control: Url {
            host: "127.0.0.1".into(),
            port: gw.port(),
            path: format!("//{other}/ctl"),
        },
    };
    let g = Gateway::Upnp {
        service,
        me: Ipv4Addr::new(192, 168, 7, 2),
    };
    assert!(g.external_ip().is_err());
    assert!(asked.lock().unwrap().is_empty(), "SOAP went to {other}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].starts_with(&format!("POST //{other}/ctl ")),
        "{seen:?}"
    );
}

#[test]
fn what_a_router_publishes() {
    let lan: IpAddr = "192.168.7.2".parse().unwrap();
    let public: IpAddr = "11.7.1.1".parse().unwrap();
    // Behind a UPnP gateway whose external address STUN confirms.
    let (p, m, _) = decide(
        7447,
        Some(lan),
        5000,
        &[sa("11.7.1.1:5000"), sa("11.7.1.1:5000")],
        Some(public),
        true,
    );
    assert_eq!(
        (p, m),
        (
            Some(sa("11.7.1.1:7447")),
            Some(Mapping::EndpointIndependent)
        )
    );
    // Double NAT: the gateway's address is not the public one.
    let (p, _, note) = decide(
        7447,
        Some(lan),
        5000,
        &[sa("11.7.1.1:5000")],
        Some("100.64.0.9".parse().unwrap()),
        true,
    );
    assert_eq!(p, None);
    assert!(note.contains("another NAT"), "{note}");
    // Mapped, no STUN: a public external address is trusted, a private one not.
    assert_eq!(
        decide(7447, None, 0, &[], Some(public), true).0,
        Some(sa("11.7.1.1:7447"))
    );
    assert_eq!(
        decide(7447, None, 0, &[], Some("10.0.0.2".parse().unwrap()), true).0,
        None
    );
    // No NAT at all.
    let (p, m, _) = decide(
        7447,
        Some(public),
        5000,
        &[sa("11.7.1.1:5000")],
        None,
        false,
    );
    assert_eq!((p, m), (Some(sa("11.7.1.1:7447")), Some(Mapping::None)));
    // NAT without a mapping: nothing to publish, and why.
    let (p, _, note) = decide(7447, Some(lan), 5000, &[sa("11.7.1.1:6000")], None, false);
    assert_eq!(p, None);
    assert!(note.contains("forward the ports"), "{note}");
    let (p, m, _) = decide(7447, None, 0, &[], None, false);
    assert_eq!((p, m), (None, None));
    // No STUN server, no gateway: a public address of its own is used,
    // a private one is not.
    let (p, _, note) = decide(7447, Some(public), 0, &[], None, false);
    assert_eq!(p, Some(sa("11.7.1.1:7447")), "{note}");
    assert_eq!(decide(7447, Some(lan), 0, &[], None, false).0, None);
    let cgnat: IpAddr = "100.64.1.2".parse().unwrap();
    assert_eq!(decide(7447, Some(cgnat), 0, &[], None, false).0, None);
}
