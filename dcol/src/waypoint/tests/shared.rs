//! Shared NAT tunnels: grants joining and leaving one lease.

use super::*;

/// Grants to one destination join one lease: `Join` (same port, the
/// element refreshed), the first release `Leave` (no kernel change), the
/// last `Remove`; a join over the member's quota is refused like a lease.
#[test]
fn grants_to_one_destination_join_and_leave_one_lease() {
    let mut w = waypoint();
    let t = Instant::now();
    let dst = "10.0.3.2:5201";
    let mut ask = |nonce: u8, kind: RequestKind| {
        w.handle(t, MS, from(), &request(&bob(), 3, "alice", nonce, MS, kind))
    };
    let port = port_of(&ask(1, nat(dst)));
    match ask(2, nat(dst)) {
        Decision::Join { lease, timeout, .. } => {
            assert_eq!(lease.port, port);
            assert_eq!(lease.holders.len(), 2);
            assert_eq!(timeout, Duration::from_secs(60));
        }
        d => panic!("{d:?}"),
    }
    assert!(matches!(ask(3, nat(dst)), Decision::Join { .. }));
    // Quota 3: a fourth holder is refused.
    assert_eq!(refusal(&ask(4, nat(dst))), RefusalReason::QuotaExceeded);
    assert!(matches!(
        ask(5, renew(port, dst, 2)),
        Decision::Refresh { .. }
    ));
    let rel = |lease: u8| RequestKind::Release {
        port,
        lease: Nonce([lease; 16]),
    };
    match ask(6, rel(2)) {
        Decision::Leave { lease, .. } => assert_eq!(lease.holders.len(), 2),
        d => panic!("{d:?}"),
    }
    assert_eq!(
        refusal(&ask(7, renew(port, dst, 2))),
        RefusalReason::UnknownLease
    );
    assert!(matches!(ask(8, rel(1)), Decision::Leave { .. }));
    match ask(9, rel(3)) {
        Decision::Remove { lease, .. } => assert_eq!(lease.port, port),
        d => panic!("{d:?}"),
    }
    assert_eq!(w.leases().count(), 0);
}
