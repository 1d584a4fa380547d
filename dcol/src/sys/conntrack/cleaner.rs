//! The conntrack flows of ended tunnels deleted on a thread of their own,
//! so that the daemon's poll loop never waits for a conntrack dump.
//!
//! Like the directory, traversal and route workers: the daemon hands the
//! thread batches of tunnels over a channel ([`Cleaner::submit`]); the thread
//! deletes their flows with [`super::delete_marked`] (one dump for every
//! batch waiting when it wakes), sends what it deleted back over another
//! channel and writes a byte to a socket pair whose other end sits in the
//! daemon's `poll(2)` set ([`Cleaner::fd`]). The daemon takes the results
//! with [`Cleaner::done`]; it keeps what they are about (leases, evidence).
//!
//! The thread inherits the network namespace of the thread that calls
//! [`Cleaner::start`]. [`Cleaner::finish`] (and dropping it) deletes the
//! flows of every batch submitted before the thread ends: nothing handed
//! over is left in the kernel.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::{self, JoinHandle};

use super::{delete_filtered, delete_on, Deleted};
use crate::sys::nfnl::NfSocket;
use crate::sys::SysError;

/// The number of a batch handed to [`Cleaner::submit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// A batch: its number and the tunnels (client, port) whose flows to delete.
type Batch = (BatchId, Vec<(IpAddr, u16)>);

/// The flows of one or more batches, deleted with one dump.
#[derive(Debug)]
pub struct Cleaned {
    /// The batches it covers, in the order they were submitted.
    pub batches: Vec<BatchId>,
    /// Per tunnel, the entries deleted and their bytes; or why the
    /// cleanup failed (the entries then live on until conntrack times them
    /// out: the map elements are gone, so no new flow starts).
    pub result: Result<Deleted, SysError>,
}

/// The running thread (see the module docs).
#[derive(Debug)]
pub struct Cleaner {
    tx: Option<Sender<Batch>>,
    rx: Receiver<Cleaned>,
    wake: UnixStream,
    /// The thread's end of the socket pair, for results made here.
    wake_tx: UnixStream,
    thread: Option<JoinHandle<()>>,
    next: u64,
    /// Tunnels per batch submitted and not reported yet.
    sizes: BTreeMap<BatchId, usize>,
    /// Results made on the loop thread (the thread was gone).
    inline: Vec<Cleaned>,
    /// The conntrack mark dumps are filtered by.
    mark: Option<u32>,
}

impl Cleaner {
    /// Starts the thread; with `mark`, its dumps are filtered by that
    /// conntrack mark ([`super::delete_marked`]).
    pub fn start(mark: Option<u32>) -> Result<Cleaner, SysError> {
        let op = "conntrack cleaner";
        let (wake, wake_tx) = UnixStream::pair().map_err(|e| SysError::io(op, e))?;
        for s in [&wake, &wake_tx] {
            s.set_nonblocking(true).map_err(|e| SysError::io(op, e))?;
        }
        let (tx, cmd_rx) = mpsc::channel();
        let (out, rx) = mpsc::channel();
        let wake_w = wake_tx.try_clone().map_err(|e| SysError::io(op, e))?;
        let thread = thread::Builder::new()
            .name("dcol-conntrack".into())
            .spawn(move || worker(&cmd_rx, &out, &wake_w, mark))
            .map_err(|e| SysError::io(op, e))?;
        Ok(Cleaner {
            tx: Some(tx),
            rx,
            wake,
            wake_tx,
            thread: Some(thread),
            next: 0,
            sizes: BTreeMap::new(),
            inline: Vec::new(),
            mark,
        })
    }

    /// Hands the thread the tunnels (client, port) whose flows to delete;
    /// returns the batch's number, which its [`Cleaned`] names.
    pub fn submit(&mut self, tunnels: Vec<(IpAddr, u16)>) -> BatchId {
        let id = BatchId(self.next);
        self.next = self.next.wrapping_add(1);
        self.sizes.insert(id, tunnels.len());
        let sent = self.tx.as_ref().map(|tx| tx.send((id, tunnels)));
        if let Some(Err(mpsc::SendError((_, tunnels)))) = sent {
            // The thread is gone (it ends only with the daemon's side, or
            // by a panic): the loop thread deletes them itself.
            log::error!("conntrack cleaner: thread gone; deleting on the loop thread");
            let result = delete_filtered(&tunnels, self.mark);
            self.inline.push(Cleaned {
                batches: vec![id],
                result,
            });
            let _ = (&self.wake_tx).write(&[1]);
        }
        id
    }

    /// Readable when results are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The results waiting (never blocks).
    pub fn done(&mut self) -> Vec<Cleaned> {
        let mut b = [0u8; 64];
        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
        let mut done = std::mem::take(&mut self.inline);
        done.extend(self.rx.try_iter());
        for id in done.iter().flat_map(|c| &c.batches) {
            self.sizes.remove(id);
        }
        done
    }

    /// Tunnels submitted whose flows are not reported deleted yet.
    pub fn pending(&self) -> usize {
        self.sizes.values().sum()
    }

    /// Ends the thread after the batches it was handed, waits for it and
    /// returns the results not taken yet.
    pub fn finish(mut self) -> Vec<Cleaned> {
        self.stop();
        self.done()
    }

    fn stop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Cleaner {
    /// Deletes the flows of every batch handed over (see [`Cleaner::finish`]).
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for a batch, takes the others waiting too, deletes their flows with
/// one dump and reports; ends when the daemon's side is dropped and every
/// batch is done.
fn worker(rx: &Receiver<Batch>, out: &Sender<Cleaned>, wake: &UnixStream, mark: Option<u32>) {
    // One socket for the thread's life (see `delete_on` on closing one);
    // opened again after a failure.
    let mut sock: Option<NfSocket> = None;
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first.0];
        let mut tunnels = first.1;
        for (id, t) in rx.try_iter() {
            batches.push(id);
            tunnels.extend(t);
        }
        let result = delete_kept(&mut sock, &tunnels, mark);
        if out.send(Cleaned { batches, result }).is_ok() {
            let _ = (&*wake).write(&[1]);
        }
    }
}

/// Deletes on the thread's socket, opened first where there is none; a
/// failure closes it.
fn delete_kept(
    sock: &mut Option<NfSocket>,
    tunnels: &[(IpAddr, u16)],
    mark: Option<u32>,
) -> Result<Deleted, SysError> {
    if tunnels.is_empty() {
        return Ok(Deleted::default());
    }
    let s = match sock {
        Some(s) => s,
        None => sock.insert(NfSocket::open()?),
    };
    let r = delete_on(s, tunnels, mark);
    if r.is_err() {
        *sock = None;
    }
    r
}

#[cfg(test)]
mod tests {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    use super::*;

    /// Results come back in the order batches were handed over, the fd
    /// turns readable, and `finish` waits for the batches not done yet.
    #[test]
    fn batches_come_back_in_order() {
        let mut c = Cleaner::start(None).expect("start");
        let a = c.submit(Vec::new());
        let mut fds = [PollFd::new(c.fd(), PollFlags::POLLIN)];
        assert_eq!(poll(&mut fds, PollTimeout::from(5000u16)).expect("poll"), 1);
        let first = c.done();
        assert_eq!(first[0].batches, vec![a]);
        assert!(first[0]
            .result
            .as_ref()
            .is_ok_and(|d| d.of("10.0.0.1".parse().unwrap(), 1) == (0, 0)));
        let b = c.submit(Vec::new());
        let d = c.submit(Vec::new());
        let rest: Vec<BatchId> = c.finish().into_iter().flat_map(|c| c.batches).collect();
        assert_eq!(rest, vec![b, d]);
    }

    /// Root, in a fresh namespace: the thread (started there) deletes a
    /// tunnel's flow and leaves another port's; `finish` waits for it.
    #[test]
    #[cfg_attr(
        not(dcol_root),
        ignore = "needs root: network namespaces, nftables, the MPTCP path manager"
    )]
    fn root_thread_deletes_in_its_namespace() {
        use crate::sys::netlink::testns::{is_root, NsThread};
        if !is_root() {
            eprintln!("SKIP: needs root");
            return;
        }
        let ns = NsThread::new();
        for (sport, dport) in [("52000", "41000"), ("52001", "41001")] {
            ns.cmd(&[
                "conntrack",
                "-I",
                "-t",
                "60",
                "-p",
                "tcp",
                "--state",
                "ESTABLISHED",
                "-s",
                "10.97.0.1",
                "-d",
                "10.96.0.2",
                "--sport",
                sport,
                "--dport",
                dport,
            ]);
        }
        let client: IpAddr = "10.97.0.1".parse().unwrap();
        let (pending, done) = ns.run(move || {
            let mut c = Cleaner::start(None).expect("start");
            c.submit(vec![(client, 41000)]);
            // Its own result first: the second batch reuses the socket.
            let mut fds = [PollFd::new(c.fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(5000u16));
            let mut done = c.done();
            c.submit(vec![(client, 41002)]);
            let pending = c.pending();
            done.extend(c.finish());
            (pending, done)
        });
        assert_eq!(pending, 1);
        assert_eq!(done.len(), 2);
        let deleted = done[0].result.as_ref().expect("deleted");
        assert_eq!(deleted.of(client, 41000).0, 1);
        assert!(done[1]
            .result
            .as_ref()
            .is_ok_and(|d| d.of(client, 41002).0 == 0));
        let left = ns.out(&["conntrack", "-L"]);
        assert!(
            left.contains("dport=41001") && !left.contains("dport=41000"),
            "{left}"
        );
    }
}
