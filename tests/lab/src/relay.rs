//! The delay relay: this kernel has no `sch_netem`, so a link's propagation
//! delay is emulated in user space. A TUN device in a router's namespace gets
//! the link's traffic by policy routing (see `Delays` in `delay.rs`); the
//! relay reads each packet, holds it for the configured delay and writes it
//! back into the same device, from where the kernel forwards it on (a second
//! routing decision keyed on `iif`). The delay is constant, so a FIFO keeps
//! packet order. Runs as its own process (`dcol-lab relay`) inside the
//! namespace, so it dies with the namespace and the lab's own work cannot
//! disturb its timing.

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::sys;

/// Largest packet the relay carries (TUN MTU is 1500; GSO is off on the lab's links).
const MAX_PACKET: usize = 65_535;

/// Runs the relay on a new TUN device `dev` with `delay` each way; returns
/// only on error (the lab kills the process).
pub fn run(dev: &str, delay: Duration) -> std::io::Result<()> {
    let tun = sys::tun_open(dev)?;
    let mut rx = tun.try_clone()?;
    let mut tx = tun;
    let (queue, due) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        sys::timerslack_1ns()?;
        for (at, pkt) in due {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            // A full queue or a vanished route drops the packet, as a link would.
            let _ = tx.write(&pkt);
        }
        Ok(())
    });
    sys::timerslack_1ns()?;
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let n = rx.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if queue
            .send((Instant::now() + delay, buf[..n].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(queue);
    writer
        .join()
        .map_err(|_| std::io::Error::other("relay writer panicked"))?
}
