//! The relay's connections through converters (issue 17): a LAN flow to a
//! server known not to speak MPTCP is opened as MPTCP to a converter
//! member, with TCP Fast Open where the kernel has it so that the Convert
//! message rides in the SYN. The LAN host's bytes wait until the
//! converter answers (one round trip through the converter, which opens
//! the server's connection meanwhile: no more than a direct handshake
//! takes); the answer is read off exactly, so the server's first bytes
//! stay in the socket for `splice`. A refusal, a broken connection or no
//! answer in time: the converter is held down ([`Converters::outcome`])
//! and the flow is opened again direct, as plain TCP (fail open; nothing
//! of the LAN host's was sent yet).

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::{Gate, Relay, RelayEvent, Side};
use crate::proxy::convert::{Answer, ConverterUse, Converters, Outcome};
use crate::sys::sock::{self, ev};

/// The MPTCP connection to the converter must be up within this ...
pub(super) const CONNECT_WITHIN: Duration = Duration::from_secs(3);
/// ... and the converter must answer within this (it gives the server 10 s).
pub(super) const ANSWER_WITHIN: Duration = Duration::from_secs(12);

/// A connection through a converter, until the converter's answer.
#[derive(Debug)]
pub(super) struct Conv {
    /// The converter ([`Converters`] index).
    idx: usize,
    /// Convert message bytes not written yet.
    out: Vec<u8>,
    /// The answer's bytes so far.
    answer: Vec<u8>,
    /// When it must have connected, then answered.
    pub(super) deadline: Instant,
}

/// Unix time in milliseconds.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local address the kernel would use toward `to` (no packet sent).
fn local_for(to: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = if to.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(to)?;
    Ok(s.local_addr()?.ip())
}

impl Relay {
    /// Converters to use (`None`: `option convert 'off'`).
    pub fn set_converters(&mut self, c: Option<Converters>) {
        self.converters = c;
    }

    /// The converters, to update their peers or identity.
    pub fn converters_mut(&mut self) -> Option<&mut Converters> {
        self.converters.as_mut()
    }

    /// Per converter: what went through it.
    pub fn converter_status(&self, now: Instant) -> Vec<ConverterUse> {
        self.converters
            .as_ref()
            .map(|c| c.status(now))
            .unwrap_or_default()
    }

    /// The upstream socket for a flow to `server`: through a converter when
    /// the server is known not to speak MPTCP (`plain`) and one is up;
    /// otherwise direct (MPTCP unless `plain`). Returns the socket, whether
    /// it is MPTCP, and the conversion.
    pub(super) fn open_upstream(
        &mut self,
        now: Instant,
        server: SocketAddr,
        plain: bool,
    ) -> io::Result<(OwnedFd, bool, Option<Conv>)> {
        if let Some(cv) = self.converters.as_mut().filter(|_| plain) {
            let local = local_for(server).unwrap_or(server.ip());
            if let Some(p) = cv.pick(now, wall_ms(), server, local) {
                match sock::connect_fastopen(p.address, cv.fastopen) {
                    Ok((fd, tfo)) => {
                        let mut out = p.message;
                        if tfo {
                            // Rides in the SYN where the converter gave a
                            // cookie before; else written once connected.
                            if let Ok(n) = sock::write(&fd, &out) {
                                out.drain(..n);
                            }
                        }
                        let conv = Conv {
                            idx: p.idx,
                            out,
                            answer: Vec::new(),
                            deadline: now + CONNECT_WITHIN,
                        };
                        return Ok((fd, true, Some(conv)));
                    }
                    Err(e) => {
                        cv.outcome(p.idx, now, Outcome::Failed);
                        log::info!("lan proxy: converter {}: {e}; going direct", p.address);
                    }
                }
            }
        }
        let (fd, mptcp) = sock::connect(server, !plain)?;
        Ok((fd, mptcp, None))
    }

    /// The MPTCP connection to the converter is up: the client role
    /// learns its token (detours toward the converter), then the Convert
    /// message goes out and the answer is awaited.
    pub(super) fn connected_to_converter(&mut self, now: Instant, idx: usize, gen: u32) {
        let Some(c) = self.conn_mut(idx, gen) else {
            return;
        };
        let local = c.local;
        match sock::mptcp_info(&c.up) {
            Ok(info) if !info.fallback => self.events.push(RelayEvent::Connected {
                local,
                token: info.token,
            }),
            Ok(_) => log::info!("lan proxy: the converter for {local} fell back to TCP"),
            Err(e) => log::debug!("lan proxy: MPTCP_INFO: {e}"),
        }
        self.pump(now, idx, gen);
    }

    /// Writes the Convert message and reads the answer; true once the
    /// conversion is on (bytes may move), false while waiting or after
    /// falling back to a direct connection.
    pub(super) fn converse(&mut self, now: Instant, idx: usize, gen: u32) -> bool {
        let slot = &mut self.slots[idx];
        let Some(c) = slot.conn.as_mut().filter(|_| slot.gen == gen) else {
            return false;
        };
        let Some(cv) = c.conv.as_mut() else {
            return true;
        };
        while !cv.out.is_empty() {
            match sock::write(&c.up, &cv.out) {
                Ok(n) => drop(cv.out.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) => return self.fail(now, idx, gen, Outcome::Failed, &format!("{e}")),
            }
        }
        loop {
            match Converters::answer(&cv.answer) {
                Answer::Incomplete(need) => {
                    let mut chunk = vec![0u8; need - cv.answer.len()];
                    match sock::read(&c.up, &mut chunk) {
                        Ok(0) => {
                            let why = "closed before answering";
                            return self.fail(now, idx, gen, Outcome::Failed, why);
                        }
                        Ok(n) => cv.answer.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                        Err(e) => return self.fail(now, idx, gen, Outcome::Failed, &e.to_string()),
                    }
                }
                Answer::Converted(_) => {
                    let i = cv.idx;
                    c.conv = None;
                    c.converter = Some(i);
                    if let Some(cs) = self.converters.as_mut() {
                        cs.outcome(i, now, Outcome::Converted);
                        log::debug!(
                            "lan proxy: {} -> {} converted by {}",
                            c.lan_peer,
                            c.server,
                            cs.name(i)
                        );
                    }
                    return true;
                }
                Answer::Refused(code) => {
                    let why = format!("refused: {code}");
                    return self.fail(now, idx, gen, Outcome::Refused, &why);
                }
                Answer::Malformed(e) => {
                    let why = format!("its answer: {e}");
                    return self.fail(now, idx, gen, Outcome::Failed, &why);
                }
            }
        }
    }

    fn fail(&mut self, now: Instant, idx: usize, gen: u32, o: Outcome, why: &str) -> bool {
        self.fail_open_as(now, idx, gen, o, why);
        false
    }

    /// The converter broke before answering: go direct.
    pub(super) fn fail_open(&mut self, now: Instant, idx: usize, gen: u32, why: &str) {
        self.fail_open_as(now, idx, gen, Outcome::Failed, why);
    }

    /// Holds the converter down and opens the flow again direct, as plain TCP.
    fn fail_open_as(&mut self, now: Instant, idx: usize, gen: u32, o: Outcome, why: &str) {
        let slot = &mut self.slots[idx];
        let Some(c) = slot.conn.as_mut().filter(|_| slot.gen == gen) else {
            return;
        };
        let Some(cv) = c.conv.take() else {
            return;
        };
        let (name, hold) = match self.converters.as_mut() {
            Some(cs) => (cs.name(cv.idx).to_owned(), cs.outcome(cv.idx, now, o)),
            None => ("?".to_owned(), None),
        };
        log::info!(
            "lan proxy: {} -> {} through converter {name}: {why}; going direct (converter held down {} s)",
            c.lan_peer,
            c.server,
            hold.unwrap_or_default().as_secs()
        );
        sock::set_reset_on_close(&c.up);
        let old = c.local;
        let up = sock::connect(c.server, false).and_then(|(up, _)| {
            let local = sock::local_addr(&up)?;
            let flags = ev::IN | ev::OUT | ev::RDHUP | ev::ET;
            self.epoll.add(&up, flags, super::tag(idx, gen, Side::Up))?;
            Ok((up, local))
        });
        match up {
            Ok((up, local)) => {
                c.up = up;
                c.local = local;
                c.mptcp = false;
                c.connected = false;
                c.gate = Gate::Shut("plain TCP");
                c.next_gate = c.gate;
                c.watch = None;
                self.events.push(RelayEvent::Closed { local: old });
            }
            Err(e) => {
                log::debug!("lan proxy: {} -> {}: {e}", c.lan_peer, c.server);
                sock::set_reset_on_close(&c.lan);
                self.stats.connect_failed += 1;
                self.remove(idx);
            }
        }
    }

    /// Conversions not connected or answered in time go direct.
    pub(super) fn conv_expired(&mut self, now: Instant) {
        if self.conv_deadlines.iter().all(|d| d.0 > now) {
            return;
        }
        let due: Vec<(Instant, usize, u32)> = self
            .conv_deadlines
            .iter()
            .filter(|d| d.0 <= now)
            .copied()
            .collect();
        self.conv_deadlines.retain(|d| d.0 > now);
        for (_, idx, gen) in due {
            let late = self
                .conn_mut(idx, gen)
                .and_then(|c| c.conv.as_ref().map(|cv| (cv.deadline <= now, c.connected)));
            match late {
                Some((true, false)) => self.fail_open(now, idx, gen, "no connection in time"),
                Some((true, true)) => self.fail_open(now, idx, gen, "no answer in time"),
                _ => {}
            }
        }
    }
}
