//! WireGuard interfaces for VPN tunnels, with two backends chosen at run time:
//! - **kernel**: the `wireguard` module (OpenWrt's `kmod-wireguard`): the link
//!   is made with rtnetlink (`kind wireguard`) and configured through the
//!   `wireguard` generic netlink family (`WG_CMD_SET_DEVICE`);
//! - **userspace**: `wireguard-go` (Debian's package, for kernels without the
//!   module): started in the foreground as our child, configured through its
//!   UAPI socket `/var/run/wireguard/<ifname>.sock` (a text protocol). That
//!   path is shared by all network namespaces, so interface names must be
//!   unique per host.
//!
//! The kernel backend is tried first; `EOPNOTSUPP` from rtnetlink (no module)
//! selects the userspace one. Addresses, routes and rules are [`super::rtnl`]'s.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netlink::{resolve_family, Attrs, MsgBuilder, NlSocket, GENL_HDRLEN, NETLINK_GENERIC};
use super::rtnl::{index_of, Rtnl};
use super::SysError;
use crate::trust::wg::WgKey;

const WG_CMD_GET_DEVICE: u8 = 0;
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_PRIVATE_KEY: u16 = 3;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_RX_BYTES: u16 = 6;
const WGPEER_A_TX_BYTES: u16 = 7;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGPEER_F_REMOVE_ME: u32 = 1;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;

/// Which implementation carries an interface.
#[derive(Debug)]
enum Backend {
    Kernel { genl: NlSocket, family: u16 },
    Userspace { child: Child, socket: PathBuf },
}

/// One peer's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeer {
    /// Its public key.
    pub key: WgKey,
    /// Where to send to (clients set the waypoint; waypoints learn it).
    pub endpoint: Option<SocketAddr>,
    /// Addresses routed to / accepted from it.
    pub allowed: Vec<(IpAddr, u8)>,
    /// Keepalive (behind NAT), seconds.
    pub keepalive: Option<u16>,
}

/// A WireGuard interface we created; [`WgDevice::destroy`] removes it.
#[derive(Debug)]
pub struct WgDevice {
    name: String,
    backend: Backend,
}

fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn sockaddr_bytes(a: &SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(a) => {
            let mut b = vec![0u8; 16];
            b[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[4..8].copy_from_slice(&a.ip().octets());
            b
        }
        SocketAddr::V6(a) => {
            let mut b = vec![0u8; 28];
            b[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            b[2..4].copy_from_slice(&a.port().to_be_bytes());
            b[8..24].copy_from_slice(&a.ip().octets());
            b[24..28].copy_from_slice(&a.scope_id().to_ne_bytes());
            b
        }
    }
}

/// `WG_CMD_SET_DEVICE` for one peer (add/update, or remove).
pub fn set_peer_msg(family: u16, ifname: &str, p: &WgPeer, remove: bool) -> MsgBuilder {
    let mut m = MsgBuilder::genl(family, WG_CMD_SET_DEVICE, 1);
    m.attr_str(WGDEVICE_A_IFNAME, ifname);
    let peers = m.begin_nested(WGDEVICE_A_PEERS);
    let peer = m.begin_nested(0);
    m.attr(WGPEER_A_PUBLIC_KEY, &p.key);
    if remove {
        m.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REMOVE_ME);
    } else {
        m.attr_u32(WGPEER_A_FLAGS, WGPEER_F_REPLACE_ALLOWEDIPS);
        if let Some(e) = &p.endpoint {
            m.attr(WGPEER_A_ENDPOINT, &sockaddr_bytes(e));
        }
        if let Some(k) = p.keepalive {
            m.attr_u16(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, k);
        }
        let ips = m.begin_nested(WGPEER_A_ALLOWEDIPS);
        for (addr, cidr) in &p.allowed {
            let one = m.begin_nested(0);
            let fam = if addr.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            m.attr_u16(WGALLOWEDIP_A_FAMILY, fam as u16);
            match addr {
                IpAddr::V4(a) => m.attr(WGALLOWEDIP_A_IPADDR, &a.octets()),
                IpAddr::V6(a) => m.attr(WGALLOWEDIP_A_IPADDR, &a.octets()),
            };
            m.attr_u8(WGALLOWEDIP_A_CIDR_MASK, *cidr);
            m.end_nested(one);
        }
        m.end_nested(ips);
    }
    m.end_nested(peer);
    m.end_nested(peers);
    m
}

/// The UAPI `set` text for one peer.
pub fn set_peer_uapi(p: &WgPeer, remove: bool) -> String {
    let mut s = format!("set=1\npublic_key={}\n", hex(&p.key));
    if remove {
        s.push_str("remove=true\n");
    } else {
        if let Some(e) = p.endpoint {
            s.push_str(&format!("endpoint={e}\n"));
        }
        if let Some(k) = p.keepalive {
            s.push_str(&format!("persistent_keepalive_interval={k}\n"));
        }
        s.push_str("replace_allowed_ips=true\n");
        for (a, c) in &p.allowed {
            s.push_str(&format!("allowed_ip={a}/{c}\n"));
        }
    }
    s.push('\n');
    s
}

impl WgDevice {
    /// Creates interface `name` with our `private` key listening on `port`
    /// (`0`: any), replacing a leftover of the same name. Not yet up.
    pub fn create(name: &str, private: &WgKey, port: u16) -> Result<WgDevice, SysError> {
        let mut rt = Rtnl::open()?;
        if index_of(name) != 0 {
            log::warn!("wireguard: removing leftover interface {name}");
            rt.del_link(name)?;
        }
        let backend = match rt.add_link(name, "wireguard") {
            Ok(()) => {
                let mut genl = NlSocket::open(NETLINK_GENERIC)?;
                let family = resolve_family(&mut genl, "wireguard")?.id;
                log::info!("wireguard: {name} in the kernel module");
                Backend::Kernel { genl, family }
            }
            Err(SysError::Netlink { errno, .. })
                if errno == libc::EOPNOTSUPP || errno == libc::EINVAL =>
            {
                log::info!("wireguard: no kernel module; {name} runs in wireguard-go");
                start_userspace(name)?
            }
            Err(e) => return Err(e),
        };
        let mut dev = WgDevice {
            name: name.to_owned(),
            backend,
        };
        let r = match &mut dev.backend {
            Backend::Kernel { genl, family } => {
                let mut m = MsgBuilder::genl(*family, WG_CMD_SET_DEVICE, 1);
                m.attr_str(WGDEVICE_A_IFNAME, name);
                m.attr(WGDEVICE_A_PRIVATE_KEY, private);
                m.attr_u16(WGDEVICE_A_LISTEN_PORT, port);
                genl.request("wireguard set device", m, |_| Ok(()))
            }
            Backend::Userspace { socket, .. } => uapi(
                socket,
                &format!(
                    "set=1\nprivate_key={}\nlisten_port={port}\n\n",
                    hex(private)
                ),
            ),
        };
        if let Err(e) = r {
            dev.destroy();
            return Err(e);
        }
        Ok(dev)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which backend, for logs and status.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Kernel { .. } => "kernel",
            Backend::Userspace { .. } => "wireguard-go",
        }
    }

    /// Adds or updates a peer.
    pub fn set_peer(&mut self, p: &WgPeer) -> Result<(), SysError> {
        self.peer(p, false)
    }

    /// A peer's byte counters `(received, sent)`; `None` when it is not
    /// configured.
    pub fn peer_bytes(&mut self, key: &WgKey) -> Result<Option<(u64, u64)>, SysError> {
        match &mut self.backend {
            Backend::Kernel { genl, family } => {
                let mut m = MsgBuilder::genl(*family, WG_CMD_GET_DEVICE, 1);
                m.attr_str(WGDEVICE_A_IFNAME, &self.name);
                let mut found = None;
                // A device with many peers comes in several messages.
                genl.dump("wireguard get device", m, |reply| {
                    if found.is_none() {
                        found = genl_peer_bytes(reply.payload, key)?;
                    }
                    Ok(())
                })?;
                Ok(found)
            }
            Backend::Userspace { socket, .. } => {
                Ok(uapi_peer_bytes(&uapi_lines(socket, "get=1\n\n")?, key))
            }
        }
    }

    /// Removes a peer.
    pub fn remove_peer(&mut self, key: &WgKey) -> Result<(), SysError> {
        let p = WgPeer {
            key: *key,
            endpoint: None,
            allowed: Vec::new(),
            keepalive: None,
        };
        self.peer(&p, true)
    }

    fn peer(&mut self, p: &WgPeer, remove: bool) -> Result<(), SysError> {
        match &mut self.backend {
            Backend::Kernel { genl, family } => genl.request(
                "wireguard set peer",
                set_peer_msg(*family, &self.name, p, remove),
                |_| Ok(()),
            ),
            Backend::Userspace { socket, .. } => uapi(socket, &set_peer_uapi(p, remove)),
        }
    }

    /// Removes the interface (and stops `wireguard-go`).
    pub fn destroy(self) {
        let name = self.name.clone();
        if let Backend::Userspace { mut child, socket } = self.backend {
            // SAFETY-free: kill via the std API (SIGKILL) would skip its
            // cleanup; SIGTERM lets it remove the interface and socket.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(2) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(socket);
        }
        if index_of(&name) != 0 {
            if let Err(e) = Rtnl::open().and_then(|mut r| r.del_link(&name)) {
                log::warn!("wireguard: removing {name}: {e}");
            }
        }
    }
}

fn start_userspace(name: &str) -> Result<Backend, SysError> {
    let socket = PathBuf::from(format!("/var/run/wireguard/{name}.sock"));
    let _ = std::fs::remove_file(&socket);
    let child = Command::new("wireguard-go")
        .args(["-f", name])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .env("LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            SysError::Unsupported(format!(
                "no WireGuard: the kernel has no module and wireguard-go could not start ({e})"
            ))
        })?;
    let mut b = Backend::Userspace { child, socket };
    let t0 = Instant::now();
    loop {
        let Backend::Userspace { child, socket } = &mut b else {
            unreachable!()
        };
        if socket.exists() && index_of(name) != 0 {
            return Ok(b);
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(SysError::Unsupported(format!("wireguard-go exited: {st}")));
        }
        if t0.elapsed() > Duration::from_secs(5) {
            let _ = child.kill();
            return Err(SysError::Unsupported(
                "wireguard-go did not start within 5 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One UAPI exchange: `req`, then `errno=N` and a blank line.
fn uapi(socket: &PathBuf, req: &str) -> Result<(), SysError> {
    uapi_lines(socket, req).map(drop)
}

/// One UAPI exchange; the lines before `errno=0`.
fn uapi_lines(socket: &PathBuf, req: &str) -> Result<Vec<String>, SysError> {
    let op = "wireguard-go UAPI";
    let mut s = UnixStream::connect(socket).map_err(|e| SysError::io(op, e))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| SysError::io(op, e))?;
    s.write_all(req.as_bytes())
        .map_err(|e| SysError::io(op, e))?;
    let mut r = BufReader::new(s);
    let mut lines = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| SysError::io(op, e))? == 0 {
            return Err(SysError::Malformed {
                op,
                what: "connection closed without errno".into(),
            });
        }
        if let Some(n) = line.trim().strip_prefix("errno=") {
            return match n.parse::<i32>() {
                Ok(0) => Ok(lines),
                Ok(errno) => Err(SysError::Netlink {
                    op,
                    errno,
                    extack: None,
                }),
                Err(_) => Err(SysError::Malformed {
                    op,
                    what: format!("bad errno line {line:?}"),
                }),
            };
        }
        if lines.len() < 100_000 {
            lines.push(line.trim_end().to_owned());
        }
    }
}

/// A peer's byte counters `(received, sent)` in a UAPI `get=1` answer.
pub fn uapi_peer_bytes<S: AsRef<str>>(lines: &[S], key: &WgKey) -> Option<(u64, u64)> {
    let want = hex(key);
    let mut in_peer = false;
    let (mut rx, mut tx) = (None, None);
    for l in lines {
        let Some((k, v)) = l.as_ref().split_once('=') else {
            continue;
        };
        match k {
            "public_key" => {
                if in_peer {
                    break;
                }
                in_peer = v == want;
            }
            "rx_bytes" if in_peer => rx = v.parse().ok(),
            "tx_bytes" if in_peer => tx = v.parse().ok(),
            _ => {}
        }
    }
    Some((rx?, tx?))
}

/// A peer's byte counters `(received, sent)` in a `WG_CMD_GET_DEVICE` reply
/// payload (genl header + attributes); `None` when the peer is not in it.
pub fn genl_peer_bytes(payload: &[u8], key: &WgKey) -> Result<Option<(u64, u64)>, SysError> {
    let op = "wireguard get device";
    let attrs = payload
        .get(GENL_HDRLEN..)
        .ok_or_else(|| SysError::Malformed {
            op,
            what: "short genl header".into(),
        })?;
    for a in Attrs::new(op, attrs) {
        let a = a?;
        if a.ty != WGDEVICE_A_PEERS {
            continue;
        }
        for peer in a.nested() {
            let (mut k, mut rx, mut tx) = (None, None, None);
            for pa in peer?.nested() {
                let pa = pa?;
                match pa.ty {
                    WGPEER_A_PUBLIC_KEY => k = Some(pa.payload),
                    WGPEER_A_RX_BYTES => rx = Some(pa.u64_ne()?),
                    WGPEER_A_TX_BYTES => tx = Some(pa.u64_ne()?),
                    _ => {}
                }
            }
            if k == Some(&key[..]) {
                return Ok(rx.zip(tx));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> WgPeer {
        WgPeer {
            key: [0xab; 32],
            endpoint: Some("198.51.100.7:51820".parse().unwrap()),
            allowed: vec![("10.200.7.2".parse().unwrap(), 32)],
            keepalive: Some(25),
        }
    }

    #[test]
    fn peer_byte_counters() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let uapi = [
            format!("private_key={}", hex(&[9; 32])),
            "listen_port=51820".into(),
            format!("public_key={}", hex(&a)),
            "rx_bytes=10".into(),
            "tx_bytes=20".into(),
            format!("public_key={}", hex(&b)),
            "endpoint=192.0.2.1:4000".into(),
            "rx_bytes=3000".into(),
            "tx_bytes=4000".into(),
        ];
        assert_eq!(uapi_peer_bytes(&uapi, &a), Some((10, 20)));
        assert_eq!(uapi_peer_bytes(&uapi, &b), Some((3000, 4000)));
        assert_eq!(uapi_peer_bytes(&uapi, &[3; 32]), None);
        assert_eq!(uapi_peer_bytes(&uapi[..4], &a), None);
        // The kernel's reply: peers nested in WGDEVICE_A_PEERS.
        let mut m = MsgBuilder::genl(30, WG_CMD_GET_DEVICE, 1);
        m.attr_str(WGDEVICE_A_IFNAME, "wg0");
        let peers = m.begin_nested(WGDEVICE_A_PEERS);
        for (k, rx, tx) in [(a, 10u64, 20u64), (b, 3000, 4000)] {
            let p = m.begin_nested(0);
            m.attr(WGPEER_A_PUBLIC_KEY, &k);
            m.attr(WGPEER_A_RX_BYTES, &rx.to_ne_bytes());
            m.attr(WGPEER_A_TX_BYTES, &tx.to_ne_bytes());
            m.end_nested(p);
        }
        m.end_nested(peers);
        let bytes = m.finish("test").unwrap();
        let payload = &bytes[16..];
        assert_eq!(genl_peer_bytes(payload, &b).unwrap(), Some((3000, 4000)));
        assert_eq!(genl_peer_bytes(payload, &[3; 32]).unwrap(), None);
        assert!(genl_peer_bytes(&payload[..payload.len() - 3], &b).is_err());
        assert!(genl_peer_bytes(&[1], &b).is_err());
    }

    #[test]
    fn uapi_text() {
        let s = set_peer_uapi(&peer(), false);
        assert_eq!(
            s,
            format!(
                "set=1\npublic_key={}\nendpoint=198.51.100.7:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.200.7.2/32\n\n",
                "ab".repeat(32)
            )
        );
        assert!(set_peer_uapi(&peer(), true).ends_with("remove=true\n\n"));
    }

    #[test]
    fn genl_message_layout() {
        // The kernel path cannot run here (no module): check the encoding.
        let bytes = set_peer_msg(0x1d, "wg0", &peer(), false)
            .finish("t")
            .unwrap();
        let attrs = super::super::netlink::Attrs::new("t", &bytes[16 + 4..]);
        let all: Vec<_> = attrs.collect::<Result<_, _>>().unwrap();
        assert_eq!(all[0].ty, WGDEVICE_A_IFNAME);
        assert_eq!(all[1].ty & 0x3fff, WGDEVICE_A_PEERS);
        let peer0: Vec<_> = all[1].nested().collect::<Result<_, _>>().unwrap();
        let fields: Vec<_> = peer0[0].nested().collect::<Result<_, _>>().unwrap();
        assert_eq!(fields[0].ty, WGPEER_A_PUBLIC_KEY);
        assert_eq!(fields[0].payload, &[0xab; 32]);
        let ep = fields.iter().find(|a| a.ty == WGPEER_A_ENDPOINT).unwrap();
        assert_eq!(&ep.payload[2..8], &[0xca, 0x6c, 198, 51, 100, 7]);
    }
}
