//! Refusals: a waypoint that is full, over our rate or out of donation is
//! paused for new tunnels, never held down like a dead one.

use super::*;

#[test]
fn waypoint_whose_donation_is_used_up_is_skipped_for_an_hour() {
    let mut p = Pair::new(Pair::alice());
    p.w.set_used_up(Some("used up".into()));
    p.event(established(1));
    assert!(p.created.is_empty());
    assert_eq!(detour_state(&p, 1), vec!["failed"]);
    let asked = p.w.stats().datagrams;
    // Later connections do not ask it again ...
    p.advance(Duration::from_secs(600), true);
    p.event(established(2));
    assert_eq!(p.w.stats().datagrams, asked);
    assert!(p.created.is_empty());
    // ... until the hour is over; by then its owner raised the cap.
    p.w.set_used_up(None);
    p.advance(USED_UP_HOLDDOWN, true);
    p.event(established(3));
    assert_eq!(p.w.stats().datagrams, asked + 1);
    assert_eq!(p.created.len(), 1);
    assert_eq!(p.created[0].0, Token(3));
}

/// A waypoint full for us (no port left for our address; our member's
/// quota) is skipped for a short back-off only: then other destinations are
/// asked for again, and it was never held down like a dead one.
#[test]
fn a_full_waypoint_is_backed_off_briefly_not_held_down() {
    type Full = fn(&mut waypoint::Settings);
    let no_ports: Full = |ws| ws.ports = (40000, 40001);
    let quota: Full = |ws| ws.max_per_member = 2;
    for (full, reason) in [(no_ports, "no ports left"), (quota, "quota exceeded")] {
        let mut p = Pair::with_waypoint(Pair::alice(), full);
        p.event(established_to(1, "10.0.3.2:5201"));
        p.event(established_to(2, "10.0.3.3:5201"));
        p.event(established_to(3, "10.0.3.4:5201"));
        assert_eq!(p.created.len(), 2, "{reason}");
        let c3 = p.c.conns().find(|c| c.token == Token(3)).unwrap();
        assert!(
            matches!(&c3.detours[0].state, DetourState::Failed(w) if w.contains(reason)),
            "{:?}",
            c3.detours[0].state
        );
        // Backed off: not asked for a moment, but not held down (it shows
        // up, its renewals go on).
        p.advance(FULL_BACKOFF / 2, true);
        p.event(established_to(4, "10.0.3.5:5201"));
        assert!(detour_state(&p, 4).is_empty(), "{reason}");
        assert!(p.c.peers(p.now)[0].up, "{reason}: held down");
        p.advance(FULL_BACKOFF / 2, true);
        // The running detours were kept. After the back-off it is asked
        // again: one released lease frees a quota slot at once; a released
        // port rests (90 s) before reuse, so the range stays full.
        assert!(p.destroyed.is_empty());
        p.event(PmEvent::Closed { token: Token(1) });
        p.event(established_to(5, "10.0.3.6:5201"));
        let granted = p.created.iter().any(|c| c.0 == Token(5));
        assert_eq!(granted, reason == "quota exceeded", "{reason}");
        assert_eq!(detour_state(&p, 5).len(), 1, "{reason}: not asked");
    }
}

#[test]
fn a_new_tunnel_refused_for_the_rate_pauses_that_waypoint_briefly() {
    let limits = waypoint::Limits {
        member_rate: 1,
        member_burst: 1,
        ..waypoint::Limits::default()
    };
    let mut p = Pair::with_limits(Pair::alice(), limits);
    let conn = |p: &mut Pair, token: u32| {
        let mut ev = established(token);
        if let PmEvent::Established { local, .. } = &mut ev {
            local.set_port(40000 + token as u16);
        }
        p.event(ev);
    };
    conn(&mut p, 1);
    assert_eq!(p.created.len(), 1);
    // The second connection's request is over bob's rate: refused, and
    // alice is not asked for new tunnels for a moment.
    conn(&mut p, 2);
    assert_eq!(detour_state(&p, 2), vec!["failed"]);
    assert!(p.c.peers(p.now).iter().all(|s| !s.up));
    let sent = p.sent;
    conn(&mut p, 3);
    assert_eq!(p.sent, sent, "asked again at once");
    // The running detour's renewals (every second here) are answered, and
    // that ends no pause: alice refused new tunnels, not answers.
    let granted = p.w.stats().granted;
    p.advance(RATE_LIMITED_HOLDDOWN * 3 / 4, true);
    assert!(p.w.stats().granted > granted, "no renewal answered");
    let sent = p.sent;
    conn(&mut p, 5);
    assert_eq!(p.sent, sent, "asked again after a renewal's answer");
    assert!(p.c.peers(p.now).iter().all(|s| !s.up));
    // Later it is.
    p.advance(RATE_LIMITED_HOLDDOWN / 4, true);
    conn(&mut p, 4);
    assert_eq!(detour_state(&p, 4), vec!["connecting"]);
}
