use super::*;
use crate::directory::{Advert, Record, Snapshot, Statement, Tunnels};
use crate::http::Url;
use crate::trust::RevocationList;
use crate::trust::{Certificate, MemberId, Roles};
use std::io::Write;

fn now_s() -> u64 {
    unix_ms() / 1000
}

fn member(seed: u8, name: &str, roles: Roles) -> (SecretKey, Certificate) {
    let k = SecretKey::from_seed([seed; 32]);
    let c = Certificate::issue(
        &SecretKey::from_seed([1; 32]),
        name,
        k.public(),
        None,
        now_s() - 60,
        now_s() + 86_400,
        roles,
    )
    .unwrap();
    (k, c)
}

fn record(seed: u8, name: &str, seq: u64) -> Vec<u8> {
    let (k, c) = member(seed, name, Roles::CLIENT | Roles::WAYPOINT);
    Record::sign(
        &k,
        c,
        seq,
        Statement::Publish(Advert {
            endpoints: vec!["192.0.2.7:7447".parse().unwrap()],
            tunnels: Tunnels::NAT,
            donate_kbit: 0,
            software: "test".into(),
        }),
    )
    .encode()
}

fn start(tag: &str) -> (Server, Url, PathBuf) {
    start_with(tag, |_| {})
}

fn start_with(tag: &str, set: impl FnOnce(&mut ServeOptions)) -> (Server, Url, PathBuf) {
    let d = std::env::temp_dir().join(format!("dcol-serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    let mut o = ServeOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        d.clone(),
        SecretKey::from_seed([1; 32]),
    );
    o.snapshot_interval = Duration::from_millis(100);
    o.request_timeout = Duration::from_millis(700);
    o.max_conns_per_source = 4;
    set(&mut o);
    let s = Server::start(o).unwrap();
    let url = Url::parse(&format!("http://{}/", s.addr())).unwrap();
    (s, url, d)
}

fn post(base: &Url, path: &str, body: &[u8]) -> (u16, String) {
    let r = http::post(
        &base.join(path).unwrap(),
        &[],
        body,
        http::Limits::default(),
    )
    .unwrap();
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

fn snapshot(base: &Url) -> Vec<u8> {
    let r = http::get(
        &base.join("/snapshot").unwrap(),
        &[],
        http::Limits::default(),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    r.body
}

fn wait_members(base: &Url, n: u32) -> Vec<u8> {
    let root = SecretKey::from_seed([1; 32]).public();
    for _ in 0..100 {
        let b = snapshot(base);
        if Snapshot::verify(&b, &root).unwrap().head.count == n {
            return b;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("snapshot never listed {n} member(s)");
}

#[test]
fn publish_refuse_revoke_over_http() {
    let (srv, base, dir) = start("http");
    let t = unix_ms();
    let (st, text) = post(&base, "/records", &record(2, "alice", t));
    assert_eq!(st, 200, "{text}");
    assert!(text.contains("'alice'"), "{text}");
    let b = wait_members(&base, 1);
    // ETag / If-None-Match.
    let serial = Snapshot::parse_unverified(&b).unwrap().head.serial;
    let etag = format!("\"{serial}\"");
    let r = http::get(
        &base.join("/snapshot").unwrap(),
        &[("If-None-Match", &etag)],
        http::Limits::default(),
    )
    .unwrap();
    assert_eq!((r.status, r.body.len()), (304, 0));

    // Refusals, each with its status and reason; the store stays intact.
    let (st, text) = post(&base, "/records", b"garbage");
    assert_eq!(st, 400, "{text}");
    let mut bad = record(3, "carol", t);
    let n = bad.len();
    bad[n - 1] ^= 1;
    let (st, text) = post(&base, "/records", &bad);
    assert_eq!((st, text.contains("bad signature")), (403, true), "{text}");
    let (st, text) = post(&base, "/records", &record(2, "alice", t));
    assert_eq!(st, 409, "{text}");
    let (st, _) = post(&base, "/records", &vec![1u8; MAX_RECORD + 1]);
    assert_eq!(st, 413);
    let (st, _) = post(&base, "/nowhere", b"");
    assert_eq!(st, 404);
    let r = http::get(
        &base.join("/records").unwrap(),
        &[],
        http::Limits::default(),
    )
    .unwrap();
    assert_eq!(r.status, 405);
    let saved = std::fs::read(
        dir.join("records")
            .join(MemberId::of(&SecretKey::from_seed([2; 32]).public()).to_string()),
    )
    .unwrap();
    assert_eq!(Record::decode(&saved).unwrap().seq, t);
    assert_eq!(std::fs::read_dir(dir.join("records")).unwrap().count(), 1);

    // A revocation by the root removes alice and lists her.
    let alice = MemberId::of(&SecretKey::from_seed([2; 32]).public());
    let rv = crate::testutil::revoked_list(1, &[alice]);
    let (st, text) = post(&base, "/revocations", rv.as_bytes());
    assert_eq!(st, 200, "{text}");
    assert!(dir.join(crate::directory::store::REVOKED_LIST).exists());
    let b = wait_members(&base, 0);
    let s = Snapshot::parse_unverified(&b).unwrap();
    assert_eq!(s.head.revoked, vec![alice]);
    let (st, text) = post(&base, "/records", &record(2, "alice", unix_ms()));
    assert_eq!((st, text.contains("revoked")), (403, true), "{text}");
    // A member cannot revoke; a replayed older list changes nothing.
    let forged = RevocationList::issue(&SecretKey::from_seed([2; 32]), 5, 1, Vec::new());
    let forged = files::revocations_text(&forged);
    assert_eq!(post(&base, "/revocations", forged.as_bytes()).0, 403);
    let (st, _) = post(&base, "/revocations", rv.as_bytes());
    assert_eq!(st, 200);
    let (st, text) = post(
        &base,
        "/revocations",
        crate::testutil::revoked_list(0, &[]).as_bytes(),
    );
    assert_eq!(st, 409, "{text}");
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slow_clients_do_not_block_others_and_are_cut_off() {
    // A 5 s limit (head and request): under qemu-user (CI runs these
    // tests on emulated MIPS and AArch64) or on a loaded machine the
    // checks below take hundreds of ms, and the stalled clients must
    // still be there for them.
    let (srv, base, dir) = start_with("slow", |o| {
        o.request_timeout = Duration::from_secs(5);
        o.head_timeout = Duration::from_secs(5);
    });
    // Three connections that send half a head and stall.
    let mut slow: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut c = TcpStream::connect(srv.addr()).unwrap();
            c.write_all(b"POST /records HTTP/1.1\r\nContent-Le")
                .unwrap();
            c
        })
        .collect();
    let t0 = Instant::now();
    snapshot(&base);
    // Behind them it would wait their 3 s limit.
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "a fetch waited {:?} behind slow clients",
        t0.elapsed()
    );
    // The per-source cap (4): with three stalled, a fourth and fifth
    // at once: one is refused with 503 (asked until the server has
    // taken the fourth in).
    let mut c4 = TcpStream::connect(srv.addr()).unwrap();
    c4.write_all(b"GET /snapshot HTTP/1.1\r\n").unwrap();
    let mut statuses = Vec::new();
    while statuses.last() != Some(&503) && t0.elapsed() < Duration::from_millis(4000) {
        thread::sleep(Duration::from_millis(50));
        let r = http::get(
            &base.join("/snapshot").unwrap(),
            &[],
            http::Limits::default(),
        )
        .unwrap();
        statuses.push(r.status);
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    // The stalled ones get 408 once their time is up.
    let mut buf = String::new();
    slow[0]
        .set_read_timeout(Some(Duration::from_secs(6)))
        .unwrap();
    std::io::Read::read_to_string(&mut slow[0], &mut buf).unwrap();
    assert!(buf.starts_with("HTTP/1.1 408"), "{buf}");
    drop(c4);
    slow.clear();
    thread::sleep(Duration::from_millis(800));
    assert_eq!(
        http::get(&base.join("/").unwrap(), &[], http::Limits::default())
            .unwrap()
            .status,
        200
    );
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn routes_and_their_body_limits() {
    assert_eq!(Route::of("GET", "/snapshot", false), Ok(Route::Snapshot));
    assert_eq!(Route::of("POST", "/renew", true), Ok(Route::Renew));
    let e = Route::of("POST", "/renew", false).unwrap_err();
    assert_eq!(e.status, 404);
    assert!(e.why.contains("--renew"), "{e:?}");
    assert_eq!(Route::of("PUT", "/records", false).unwrap_err().status, 405);
    assert_eq!(
        Route::of("POST", "/etc/passwd", false).unwrap_err().status,
        404
    );
    // Each route its own limit; a GET takes no body.
    assert_eq!(Route::Record.max_body(), MAX_RECORD);
    assert_eq!(Route::Renew.max_body(), MAX_RECORD);
    assert_eq!(
        Route::Revocation.max_body(),
        files::MAX_REVOCATION_FILE as usize
    );
    assert!(Route::Record.check_length(MAX_RECORD as u64).is_ok());
    let e = Route::Record
        .check_length(MAX_RECORD as u64 + 1)
        .unwrap_err();
    assert_eq!(e.status, 413);
    assert_eq!(
        e.why,
        format!("the body (4097 bytes) is larger than a record may be ({MAX_RECORD} bytes)")
    );
    assert!(Route::Revocation.check_length(100_000).is_ok());
    assert!(Route::Snapshot.check_length(0).is_ok());
    let e = Route::Snapshot.check_length(1).unwrap_err();
    assert_eq!(
        (e.status, e.why.contains("a GET takes no body")),
        (413, true)
    );
    assert!(Route::Index.check_length(u64::MAX).is_err());
}

/// Connects (from `from`, when given), sends `bytes`, and reads the
/// answer: its text and how long it took from the connect.
fn exchange(
    to: SocketAddr,
    from: Option<std::net::IpAddr>,
    bytes: &[u8],
    limit: Duration,
) -> (String, Duration) {
    let t0 = Instant::now();
    let mut c = match from {
        Some(f) => crate::sys::sock::connect_from(f, to).unwrap(),
        None => TcpStream::connect(to).unwrap(),
    };
    c.write_all(bytes).unwrap();
    c.set_read_timeout(Some(limit)).unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut c, &mut text);
    (text, t0.elapsed())
}

#[test]
fn bodies_over_the_route_limit_are_refused_before_they_are_read() {
    // A long request time: a server that waits for the body (up to the
    // 256 KiB it used to allow on every route) answers only after it.
    let (srv, base, dir) = start_with("limits", |o| {
        o.request_timeout = Duration::from_secs(8);
        o.head_timeout = Duration::from_secs(8);
    });
    // Well under the request time, with room for qemu-user (CI).
    let quick = Duration::from_secs(5);
    for (head, want) in [
        (
            "POST /records HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
            "HTTP/1.1 413",
        ),
        (
            "POST /renew HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "POST /revocations HTTP/1.1\r\nContent-Length: 300000\r\n\r\n",
            "HTTP/1.1 413",
        ),
        (
            "GET /snapshot HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
            "HTTP/1.1 413",
        ),
        (
            "POST /nowhere HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
            "HTTP/1.1 404",
        ),
        (
            "DELETE /records HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
            "HTTP/1.1 405",
        ),
    ] {
        let (text, took) = exchange(srv.addr(), None, head.as_bytes(), quick * 2);
        assert!(text.starts_with(want), "{head:?}: {text}");
        assert!(took < quick, "{head:?}: answered after {took:?}");
    }
    let (text, _) = exchange(
        srv.addr(),
        None,
        b"POST /records HTTP/1.1\r\nContent-Length: 100000\r\n\r\n",
        quick,
    );
    assert!(
        text.contains("the body (100000 bytes) is larger than a record may be (4096 bytes)"),
        "{text}"
    );
    // A chunked body is cut off as soon as it passes the limit.
    let mut chunked = b"POST /records HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    chunked.extend_from_slice(format!("{:x}\r\n", MAX_RECORD + 1).as_bytes());
    chunked.extend(std::iter::repeat_n(b'x', MAX_RECORD + 1));
    let (text, took) = exchange(srv.addr(), None, &chunked, quick * 2);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(took < quick, "{took:?}");
    // The server goes on serving.
    assert!(!snapshot(&base).is_empty());
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_slow_head_is_cut_off_at_the_head_timeout() {
    // A head timeout far below the request's (6 s): each check below
    // would take the request's time without it.
    let (srv, base, dir) = start_with("head", |o| {
        o.head_timeout = Duration::from_millis(300);
        o.request_timeout = Duration::from_secs(6);
    });
    // Half a head, then nothing.
    let (text, took) = exchange(
        srv.addr(),
        None,
        b"POST /records HTTP/1.1\r\nContent-Le",
        Duration::from_secs(8),
    );
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("the request head was not complete within 300ms"),
        "{text}"
    );
    assert!(took < Duration::from_secs(4), "cut off after {took:?}");
    // A head trickled in a byte at a time is cut off all the same.
    let t0 = Instant::now();
    let mut c = TcpStream::connect(srv.addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    for b in b"GET /snapshot HTTP/1.1\r\nX-Slow: yes\r\n".iter() {
        if c.write_all(&[*b]).is_err() {
            break;
        }
        thread::sleep(Duration::from_millis(40));
    }
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut c, &mut text);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // The body has the request's time, not the head's: a body sent
    // after the head timeout is still read (and refused for what it
    // is, not for being slow).
    let mut c = TcpStream::connect(srv.addr()).unwrap();
    c.write_all(b"POST /records HTTP/1.1\r\nContent-Length: 7\r\n\r\ngar")
        .unwrap();
    thread::sleep(Duration::from_millis(800));
    c.write_all(b"bage").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut c, &mut text);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!snapshot(&base).is_empty());
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_source_cannot_take_every_connection() {
    let (srv, _base, dir) = start_with("sources", |o| {
        o.max_conns = 6;
        o.max_conns_per_source = 4;
        // The stalled ones must stay for the checks (qemu-user is slow).
        o.request_timeout = Duration::from_secs(10);
        o.head_timeout = Duration::from_secs(10);
    });
    let to = srv.addr();
    let from = |last: u8| Some(std::net::IpAddr::from([127, 0, 0, last]));
    // Four stalled connections from 127.0.0.1 ...
    let _stalled: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = crate::sys::sock::connect_from([127, 0, 0, 1].into(), to).unwrap();
            c.write_all(b"GET /snapshot HTTP/1.1\r\n").unwrap();
            c
        })
        .collect();
    // ... a fifth from it is refused (asked until the server took the
    // four in) ...
    let t0 = Instant::now();
    let busy = loop {
        let (text, _) = exchange(
            to,
            from(1),
            b"GET / HTTP/1.1\r\n\r\n",
            Duration::from_secs(3),
        );
        if text.starts_with("HTTP/1.1 503") || t0.elapsed() > Duration::from_secs(3) {
            break text;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    // ... while another source is served at once.
    let (text, took) = exchange(
        to,
        from(2),
        b"GET / HTTP/1.1\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn renewal_only_when_enabled_due_valid_and_signed() {
    use crate::directory::renew::RenewalRequest;
    let root = SecretKey::from_seed([1; 32]);
    let k = SecretKey::from_seed([7; 32]);
    // Valid for 3 days, more than 2 of them gone: due.
    let cert = |from: u64| {
        Certificate::issue(
            &root,
            "bob",
            k.public(),
            Some([5; 32]),
            from,
            from + 3 * 86_400,
            Roles::CLIENT,
        )
        .unwrap()
    };
    let due = cert(now_s() - 2 * 86_400 - 3600);
    let ask =
        |c: &Certificate, key: &SecretKey| RenewalRequest::sign(key, c.clone(), unix_ms()).encode();
    let (off, base_off, dir_off) = start("renew-off");
    let (st, text) = post(&base_off, "/renew", &ask(&due, &k));
    assert_eq!(st, 404, "{text}");
    assert!(text.contains("--renew"), "{text}");
    off.stop();
    let _ = std::fs::remove_dir_all(&dir_off);

    let (srv, base, dir) = start_with("renew", |o| o.renew = true);
    let (st, text) = post(&base, "/renew", &ask(&due, &k));
    assert_eq!(st, 200, "{text}");
    let new = files::parse_certificate(std::path::Path::new("answer"), &text).unwrap();
    assert_eq!(
        (new.key, new.wg_key, new.roles),
        (due.key, due.wg_key, due.roles)
    );
    assert!(
        new.not_after >= now_s() + 3 * 86_400 - 1,
        "{}",
        new.not_after
    );
    new.verify(&root.public(), now_s()).unwrap();
    // Not due yet: 409, saying from when.
    let (st, text) = post(&base, "/renew", &ask(&cert(now_s() - 60), &k));
    assert_eq!(st, 409, "{text}");
    assert!(text.contains("is renewed from"), "{text}");
    // Signed by someone else, garbage: 403, 400.
    assert_eq!(
        post(&base, "/renew", &ask(&due, &SecretKey::from_seed([8; 32]))).0,
        403
    );
    assert_eq!(post(&base, "/renew", b"garbage").0, 400);
    // Revoked: 403.
    let rv = files::revocations_text(&RevocationList::issue(
        &root,
        1,
        now_s(),
        vec![crate::trust::RevokedEntry {
            member: due.member,
            at: now_s(),
            reason: "lost".into(),
        }],
    ));
    assert_eq!(post(&base, "/revocations", rv.as_bytes()).0, 200);
    let (st, text) = post(&base, "/renew", &ask(&due, &k));
    assert_eq!(st, 403, "{text}");
    assert!(text.contains("revoked"), "{text}");
    srv.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
