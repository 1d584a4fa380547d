//! The member side's background thread: fetches the snapshot every interval
//! (`If-None-Match` with the cached serial), verifies the root's signature,
//! refuses tampered, truncated, foreign, older or days-old snapshots (the
//! cached one stays in force), caches accepted ones on disk, picks waypoints
//! ([`super::choose`]) and posts this member's records. HTTP is blocking but
//! bounded by timeouts and runs here, never on the daemon's poll loop, which
//! learns of results through [`Agent::fd`] and [`Agent::reports`].

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::store::write_atomic;
use super::{
    choose, freshness, Chosen, DirError, Freshness, Selection, Snapshot, SnapshotHead,
    StaleSnapshot, MAX_SNAPSHOT,
};
use crate::http::{self, Url};
use crate::trust::{PublicKey, Revocations};

/// Time allowed for one snapshot download.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Time allowed for posting one record.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the agent works with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Where the snapshot is (the directory server, a CDN, an object store).
    pub snapshot: Url,
    /// Where records are posted (the directory server's `/records`).
    pub publish: Url,
    /// Fetch interval.
    pub interval: Duration,
    /// The cache file.
    pub cache: PathBuf,
    /// The collective's root key.
    pub root: PublicKey,
    /// How waypoints are picked.
    pub selection: Selection,
    /// Members revoked locally (UCI), never picked.
    pub revoked: Revocations,
}

enum Command {
    Post { bytes: Vec<u8>, withdraw: bool },
    Renew(Vec<u8>),
    Settings(Box<AgentSettings>),
    Stop,
}

/// What the agent tells the daemon.
#[derive(Debug)]
pub enum Report {
    /// A verified snapshot is in force (newly fetched, or from the cache at
    /// start, or chosen again after new settings).
    Snapshot {
        /// What was picked from it.
        chosen: Chosen,
        /// It came from the cache file.
        from_cache: bool,
        /// Unix seconds.
        at: u64,
    },
    /// The directory has nothing newer than the cached snapshot.
    Unchanged {
        /// Unix seconds.
        at: u64,
    },
    /// Fetching failed, or the snapshot was refused; the cached one stays.
    FetchFailed {
        /// Why.
        error: String,
        /// Unix seconds.
        at: u64,
    },
    /// A certificate renewal was asked for (`POST /renew` next to the
    /// records URL).
    Renewed {
        /// `Ok(the new certificate's text)` or `Err(why)`.
        result: Result<String, PostError>,
        /// Unix seconds.
        at: u64,
    },
    /// A record was posted.
    Posted {
        /// It was a withdrawal.
        withdraw: bool,
        /// `Ok(server's reply)` or `Err(why)`.
        result: Result<String, PostError>,
        /// Unix seconds.
        at: u64,
    },
}

fn unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a POST to the directory (a record, a renewal) failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The renewal URL cannot be made from the records URL.
    #[error("the renewal URL: {0}")]
    Url(#[source] http::WireError),
    /// No answer, a broken one, or one too large.
    #[error("{0}")]
    Http(#[source] http::HttpError),
    /// The server answered with another status than 200.
    #[error("{url}: HTTP {status}: {text}")]
    Status {
        /// Where the POST went.
        url: Url,
        /// The HTTP status.
        status: u16,
        /// The server's answer, trimmed.
        text: String,
    },
}

/// Posts a record to `url`; the server's one-line answer or why it failed.
pub fn post_record(url: &Url, bytes: &[u8], timeout: Duration) -> Result<String, PostError> {
    let limits = http::Limits {
        timeout,
        max_body: 4096,
    };
    let r = http::post(
        url,
        &[("Content-Type", "application/octet-stream")],
        bytes,
        limits,
    )
    .map_err(PostError::Http)?;
    let text = String::from_utf8_lossy(&r.body).trim().to_owned();
    if r.status == 200 {
        Ok(text)
    } else {
        Err(PostError::Status {
            url: url.clone(),
            status: r.status,
            text,
        })
    }
}

/// The running thread.
#[derive(Debug)]
pub struct Agent {
    tx: Sender<Command>,
    rx: Receiver<Report>,
    wake: UnixStream,
}

impl Agent {
    /// Starts the thread; it first loads the cache, then fetches.
    pub fn start(settings: AgentSettings) -> io::Result<Agent> {
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, cmd_rx) = mpsc::channel();
        let (report_tx, rx) = mpsc::channel();
        thread::Builder::new()
            .name("dcol-directory".into())
            .spawn(move || {
                let mut w = Worker {
                    settings,
                    cached: None,
                    out: report_tx,
                    wake: wake_tx,
                };
                w.run(&cmd_rx);
            })?;
        Ok(Agent { tx, rx, wake })
    }

    /// Readable when reports are waiting.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// The reports waiting (never blocks).
    pub fn reports(&mut self) -> Vec<Report> {
        let mut b = [0u8; 64];
        while matches!((&self.wake).read(&mut b), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }

    /// Posts a record (publish or withdraw) from the thread.
    pub fn post(&self, bytes: Vec<u8>, withdraw: bool) {
        let _ = self.tx.send(Command::Post { bytes, withdraw });
    }

    /// Asks the directory for a new certificate (a signed
    /// [`super::renew::RenewalRequest`]).
    pub fn renew(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(Command::Renew(bytes));
    }

    /// New settings: a changed URL fetches now; a changed selection picks
    /// again from the cached snapshot.
    pub fn set(&self, settings: AgentSettings) {
        let _ = self.tx.send(Command::Settings(Box::new(settings)));
    }
}

impl Drop for Agent {
    /// Ends the thread after what it is doing (not joined: a download in
    /// progress may take its full timeout; the process may exit meanwhile).
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Stop);
    }
}

struct Worker {
    settings: AgentSettings,
    cached: Option<(Vec<u8>, SnapshotHead)>,
    out: Sender<Report>,
    wake: UnixStream,
}

impl Worker {
    fn report(&mut self, r: Report) {
        if self.out.send(r).is_ok() {
            let _ = (&self.wake).write(&[1]);
        }
    }

    fn run(&mut self, rx: &Receiver<Command>) {
        self.load_cache();
        let mut next_fetch = Instant::now();
        loop {
            let wait = next_fetch.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Command::Post { bytes, withdraw }) => {
                    let result = post_record(&self.settings.publish, &bytes, POST_TIMEOUT);
                    self.report(Report::Posted {
                        withdraw,
                        result,
                        at: unix_s(),
                    });
                }
                Ok(Command::Renew(bytes)) => {
                    let result = self
                        .settings
                        .publish
                        .join("/renew")
                        .map_err(PostError::Url)
                        .and_then(|url| post_record(&url, &bytes, POST_TIMEOUT));
                    self.report(Report::Renewed {
                        result,
                        at: unix_s(),
                    });
                }
                Ok(Command::Settings(s)) => {
                    let old = std::mem::replace(&mut self.settings, *s);
                    if old.snapshot != self.settings.snapshot || old.root != self.settings.root {
                        next_fetch = Instant::now();
                    } else if old.interval != self.settings.interval {
                        next_fetch = Instant::now() + self.settings.interval;
                    }
                    if (&old.selection, &old.revoked)
                        != (&self.settings.selection, &self.settings.revoked)
                    {
                        self.choose_again();
                    }
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    self.fetch();
                    next_fetch = Instant::now() + self.settings.interval;
                }
            }
        }
    }

    fn choose_again(&mut self) {
        let Some((bytes, _)) = &self.cached else {
            return;
        };
        if let Ok(s) = Snapshot::verify(bytes, &self.settings.root) {
            let chosen = choose(
                &s,
                &self.settings.selection,
                &self.settings.revoked,
                unix_s(),
            );
            self.report(Report::Snapshot {
                chosen,
                from_cache: true,
                at: unix_s(),
            });
        }
    }

    fn load_cache(&mut self) {
        let path = self.settings.cache.clone();
        let bytes = match read_limited(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                let error = format!("cache {}: {e}", path.display());
                self.report(Report::FetchFailed {
                    error,
                    at: unix_s(),
                });
                return;
            }
        };
        let now = unix_s();
        let r = Snapshot::verify(&bytes, &self.settings.root)
            .map_err(|e| e.to_string())
            .and_then(|s| {
                freshness(&s.head, &bytes, None, now).map_err(|e| e.to_string())?;
                Ok(s)
            });
        match r {
            Ok(s) => {
                let chosen = choose(&s, &self.settings.selection, &self.settings.revoked, now);
                let head = s.head.clone();
                self.cached = Some((bytes, head));
                self.report(Report::Snapshot {
                    chosen,
                    from_cache: true,
                    at: now,
                });
            }
            Err(e) => {
                let error = format!("cache {}: {e}; ignored", path.display());
                self.report(Report::FetchFailed { error, at: now });
            }
        }
    }

    fn fetch(&mut self) {
        let url = self.settings.snapshot.clone();
        let etag = self
            .cached
            .as_ref()
            .map(|(_, h)| format!("\"{}\"", h.serial));
        let fields: Vec<(&str, &str)> = etag
            .as_deref()
            .map(|e| ("If-None-Match", e))
            .into_iter()
            .collect();
        let limits = http::Limits {
            timeout: FETCH_TIMEOUT,
            max_body: MAX_SNAPSHOT,
        };
        let at = unix_s();
        let r = match http::get(&url, &fields, limits) {
            Ok(r) => r,
            Err(e) => {
                return self.report(Report::FetchFailed {
                    error: e.to_string(),
                    at,
                })
            }
        };
        match r.status {
            304 => return self.report(Report::Unchanged { at }),
            200 => {}
            s => {
                return self.report(Report::FetchFailed {
                    error: format!("{url}: HTTP {s}"),
                    at,
                })
            }
        }
        match self.accept(r.body, at) {
            Ok(Some(chosen)) => self.report(Report::Snapshot {
                chosen,
                from_cache: false,
                at,
            }),
            Ok(None) => self.report(Report::Unchanged { at }),
            Err(why) => {
                let keep = match &self.cached {
                    Some((_, h)) => format!("keeping the cached serial {}", h.serial),
                    None => "no snapshot cached".into(),
                };
                self.report(Report::FetchFailed {
                    error: format!("{url}: snapshot refused: {why}; {keep}"),
                    at,
                });
            }
        }
    }

    /// Verifies and caches `bytes`; `Ok(None)` when it is the cached one.
    fn accept(&mut self, bytes: Vec<u8>, now: u64) -> Result<Option<Chosen>, Refused> {
        let s = Snapshot::verify(&bytes, &self.settings.root).map_err(Refused::Invalid)?;
        let have = self.cached.as_ref().map(|(b, h)| (h, b.as_slice()));
        match freshness(&s.head, &bytes, have, now).map_err(Refused::Stale)? {
            Freshness::Same => return Ok(None),
            Freshness::Newer => {}
        }
        let chosen = choose(&s, &self.settings.selection, &self.settings.revoked, now);
        let head = s.head.clone();
        if let Some(dir) = self.settings.cache.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = write_atomic(&self.settings.cache, &bytes, 0o644) {
            // Still use it: the cache only matters across restarts.
            log::warn!("directory cache {}: {e}", self.settings.cache.display());
        }
        self.cached = Some((bytes, head));
        Ok(Some(chosen))
    }
}

/// Why a fetched snapshot is not taken.
#[derive(Debug, thiserror::Error)]
enum Refused {
    /// Its signature or contents do not hold.
    #[error("{0}")]
    Invalid(#[source] DirError),
    /// Older than the cached one, or too old (`StaleSnapshot` is not a
    /// `std::error::Error` yet: directory/mod.rs is being split elsewhere).
    #[error("{0}")]
    Stale(StaleSnapshot),
}

fn read_limited(path: &Path) -> io::Result<Vec<u8>> {
    let mut b = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_SNAPSHOT as u64 + 1)
        .read_to_end(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::serve::{ServeOptions, Server};
    use crate::directory::{build_snapshot, Advert, Entry, Record, Statement, Tunnels};
    use crate::trust::{Certificate, MemberId, Roles, SecretKey};
    use std::net::TcpListener;

    fn root() -> SecretKey {
        SecretKey::from_seed([1; 32])
    }

    fn settings(base: &Url, cache: &Path) -> AgentSettings {
        AgentSettings {
            snapshot: base.join("/snapshot").unwrap(),
            publish: base.join("/records").unwrap(),
            interval: Duration::from_millis(200),
            cache: cache.to_owned(),
            root: root().public(),
            selection: Selection {
                own: MemberId([0; 8]),
                max_peers: 8,
                vpn: false,
            },
            revoked: Revocations::default(),
        }
    }

    /// Waits for the first report matching `f`.
    fn wait(a: &mut Agent, f: impl Fn(&Report) -> bool) -> Report {
        for _ in 0..100 {
            if let Some(r) = a.reports().into_iter().find(|r| f(r)) {
                return r;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("no such report");
    }

    /// Serves `body` with status 200 to every connection.
    fn evil(body: Vec<u8>) -> Url {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = Url::parse(&format!("http://{}/snapshot", l.local_addr().unwrap())).unwrap();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { continue };
                let _ = http::read_request(&mut c, 0, Duration::from_secs(2));
                let _ = http::write_response(&mut c, 200, "OK", "x", &[], &body);
            }
        });
        url
    }

    #[test]
    fn fetch_publish_cache_and_refuse_bad_snapshots() {
        let d = std::env::temp_dir().join(format!("dcol-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut o = ServeOptions::new("127.0.0.1:0".parse().unwrap(), d.join("store"), root());
        o.snapshot_interval = Duration::from_millis(50);
        let srv = Server::start(o).unwrap();
        let base = Url::parse(&format!("http://{}/", srv.addr())).unwrap();
        let cache = d.join("cache");
        let mut a = Agent::start(settings(&base, &cache)).unwrap();
        wait(
            &mut a,
            |r| matches!(r, Report::Snapshot { chosen, .. } if chosen.members == 0),
        );

        // Publish a member; the next fetches pick it up.
        let k = SecretKey::from_seed([2; 32]);
        let now = unix_s();
        let c = Certificate::issue(
            &root(),
            "alice",
            k.public(),
            None,
            now - 60,
            now + 3600,
            Roles::CLIENT | Roles::WAYPOINT,
        )
        .unwrap();
        let rec = Record::sign(
            &k,
            c,
            now * 1000,
            Statement::Publish(Advert {
                endpoints: vec!["192.0.2.7:7447".parse().unwrap()],
                tunnels: Tunnels::NAT,
                donate_kbit: 0,
                software: "t".into(),
            }),
        );
        a.post(rec.encode(), false);
        let r = wait(&mut a, |r| matches!(r, Report::Posted { .. }));
        assert!(
            matches!(&r, Report::Posted { result: Ok(t), .. } if t.contains("alice")),
            "{r:?}"
        );
        let Report::Snapshot { chosen, .. } = wait(
            &mut a,
            |r| matches!(r, Report::Snapshot { chosen, from_cache: false, .. } if chosen.members == 1),
        ) else {
            unreachable!()
        };
        assert_eq!(chosen.peers[0].name, "alice");
        let serial = chosen.serial;
        assert!(cache.exists());
        // Nothing new: 304.
        wait(&mut a, |r| matches!(r, Report::Unchanged { .. }));

        // Bad snapshots from elsewhere are refused; the cached one stays.
        let good = std::fs::read(&cache).unwrap();
        let mut flipped = good.clone();
        let i = good.len() - 70; // the entry, under the signature
        flipped[i] ^= 1;
        let older = build_snapshot(&root(), serial - 1, now, vec![], [].iter());
        let foreign = build_snapshot(
            &SecretKey::from_seed([9; 32]),
            serial + 1,
            now,
            vec![],
            [].iter(),
        );
        let ancient = build_snapshot(&root(), serial + 1, now - 8 * 86_400, vec![], [].iter());
        let e: Entry = rec.entry().unwrap();
        let same_serial = build_snapshot(&root(), serial, now, vec![MemberId([7; 8])], [e].iter());
        for (body, why) in [
            (flipped, "bad signature"),
            (good[..good.len() / 2].to_vec(), "snapshot refused"),
            (good[..10].to_vec(), "truncated"),
            (older, "older than the cached serial"),
            (foreign, "another collective"),
            (ancient, "days ago"),
            (same_serial, "content differs"),
            (b"<html>".to_vec(), "not a dcol snapshot"),
        ] {
            let mut s = settings(&base, &cache);
            s.snapshot = evil(body);
            // Fetched once right away (new URL), then not again for an hour.
            s.interval = Duration::from_secs(3600);
            a.set(s);
            let r = wait(&mut a, |r| matches!(r, Report::FetchFailed { .. }));
            let Report::FetchFailed { error, .. } = r else {
                unreachable!()
            };
            assert!(error.contains(why), "{error} lacks {why}");
            assert!(
                error.contains(&format!("keeping the cached serial {serial}")),
                "{error}"
            );
            assert_eq!(std::fs::read(&cache).unwrap(), good, "cache overwritten");
        }
        drop(a);

        // A restart starts from the cache, even with the directory gone.
        srv.stop();
        let mut a = Agent::start(settings(&base, &cache)).unwrap();
        let r = wait(&mut a, |r| matches!(r, Report::Snapshot { .. }));
        assert!(
            matches!(&r, Report::Snapshot { chosen, from_cache: true, .. } if chosen.serial == serial && chosen.peers.len() == 1),
            "{r:?}"
        );
        wait(&mut a, |r| matches!(r, Report::FetchFailed { .. }));
        // A local revocation drops the member without a new snapshot.
        let mut s = settings(&base, &cache);
        s.revoked.insert(rec.member());
        a.set(s);
        let r = wait(&mut a, |r| matches!(r, Report::Snapshot { .. }));
        assert!(
            matches!(&r, Report::Snapshot { chosen, .. } if chosen.peers.is_empty()),
            "{r:?}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
