//! Directory benchmark (no root needed): `cargo bench -p dcol --bench directory`.
//!
//! A snapshot of 100,000 members (each with an IPv4 and an IPv6 endpoint, a
//! 12-character name), as the directory server signs it and a member router
//! fetches it. Reported: its size; the root's signing time; the member's
//! verify time (Ed25519 over the whole document, SHA-512 dominated), the
//! entry parse time (every entry decoded once, one at a time) and the waypoint
//! choice (verify excluded); the server's cost to check one uploaded record
//! (two signature checks: certificate and record). Medians of several runs.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use dcol::directory::registry::{Limits, Registry};
use dcol::directory::{
    build_snapshot, choose, Advert, Entry, Record, Selection, Snapshot, Statement, Tunnels,
};
use dcol::trust::{Certificate, MemberId, Revocations, Roles, SecretKey};

const MEMBERS: u32 = 100_000;
const RUNS: usize = 9;
const NOW: u64 = 1_800_000_000;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                black_box(f());
                t.elapsed()
            })
            .collect(),
    )
}

fn entry(i: u32) -> Entry {
    let b = i.to_be_bytes();
    let mut id = [0u8; 8];
    id[4..].copy_from_slice(&b);
    Entry {
        member: MemberId(id),
        name: format!("member-{i:05}"),
        endpoints: vec![
            SocketAddr::new(Ipv4Addr::new(100, b[1], b[2], b[3]).into(), 7447),
            SocketAddr::new(
                Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    u16::from(b[1]),
                    u16::from(b[2]),
                    0,
                    0,
                    0,
                    u16::from(b[3]),
                )
                .into(),
                7447,
            ),
        ],
        tunnels: if i.is_multiple_of(4) {
            Tunnels(0x03)
        } else {
            Tunnels::NAT
        },
        donate_kbit: if i.is_multiple_of(3) { 8000 } else { 0 },
        software: "0.1.0".into(),
        not_after: NOW + 365 * 86_400,
    }
}

fn main() {
    let root = SecretKey::from_seed([1; 32]);
    let entries: Vec<Entry> = (0..MEMBERS).map(entry).collect();
    let revoked: Vec<MemberId> = (0..100u32)
        .map(|i| MemberId([0xee, 0, 0, 0, 0, 0, 0, i as u8]))
        .collect();

    let sign = time(3, || {
        build_snapshot(&root, 1, NOW, revoked.clone(), entries.iter())
    });
    let snap = build_snapshot(&root, 1, NOW, revoked, entries.iter());
    let size = snap.len();

    let verify = time(RUNS, || {
        Snapshot::verify(&snap, &root.public()).expect("valid")
    });
    let s = Snapshot::verify(&snap, &root.public()).expect("valid");
    let parse = time(RUNS, || {
        s.entries()
            .map(|e| e.expect("entry").endpoints.len())
            .sum::<usize>()
    });
    let sel = Selection {
        own: MemberId([7; 8]),
        max_peers: 8,
        vpn: false,
    };
    let pick = time(RUNS, || choose(&s, &sel, &Revocations::default(), NOW));
    let chosen = choose(&s, &sel, &Revocations::default(), NOW);
    assert_eq!(chosen.members, MEMBERS as usize);
    assert_eq!(chosen.peers.len(), 16);

    // The server: one uploaded record checked (decode, certificate,
    // signature, rate, freshness).
    let n = 2000u32;
    let uploads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let mut seed = [2u8; 32];
            seed[..4].copy_from_slice(&i.to_be_bytes());
            let k = SecretKey::from_seed(seed);
            let c = Certificate::issue(
                &root,
                &format!("m{i}"),
                k.public(),
                None,
                NOW - 60,
                NOW + 86_400,
                Roles::CLIENT | Roles::WAYPOINT,
            )
            .expect("certificate");
            Record::sign(
                &k,
                c,
                NOW * 1000,
                Statement::Publish(Advert {
                    endpoints: entry(i).endpoints,
                    tunnels: Tunnels::NAT,
                    donate_kbit: 0,
                    software: "0.1.0".into(),
                }),
            )
            .encode()
        })
        .collect();
    let mut reg = Registry::new(root.public(), Limits::default());
    let t = Instant::now();
    for u in &uploads {
        let r = reg.check_record(NOW * 1000, u).expect("accepted");
        reg.commit_record(r);
    }
    let per_record = t.elapsed() / n;

    println!("directory snapshot, {MEMBERS} members (IPv4 + IPv6 endpoint each, 100 revoked):");
    println!(
        "  size            {size} bytes ({:.2} MB, {:.1} bytes/member)",
        size as f64 / 1e6,
        size as f64 / f64::from(MEMBERS)
    );
    println!("  sign (server)   {:.1} ms", sign.as_secs_f64() * 1e3);
    println!("  verify (member) {:.1} ms", verify.as_secs_f64() * 1e3);
    println!(
        "  parse entries   {:.1} ms ({:.0} ns/entry)",
        parse.as_secs_f64() * 1e3,
        parse.as_nanos() as f64 / f64::from(MEMBERS)
    );
    println!(
        "  choose 8 peers  {:.1} ms (parse included, verify not)",
        pick.as_secs_f64() * 1e3
    );
    println!(
        "server: check + commit of one uploaded record {:.1} us ({n} records)",
        per_record.as_secs_f64() * 1e6
    );
}
