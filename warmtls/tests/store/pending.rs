//! A TLS 1.3 ticket taken for a connection is pending, not erased: single use
//! while pending, restored (1-RTT only, bounded) when the connection fails,
//! erased when the device has its replacement, and treated as restored once
//! its deadline passes with nobody left to settle it (a killed process).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::support::*;
use warmtls::store::{ManualClock, TakeRules, TicketState};

const RULES: TakeRules = TakeRules {
    window: Duration::from_secs(15),
    max_restores: 2,
    fresh_only: false,
};
const TTL: Duration = Duration::from_secs(3600);

#[test]
fn a_pending_ticket_misses_until_restored_and_a_delivered_one_is_gone() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&config(dir.path(), 1000), &clock);
    assert!(s.put(&key(1), &value(1, 0, 80), TTL));

    let (v, _, taken) = s.take_ticket(&key(1), &RULES).expect("a stored ticket");
    assert_eq!(check_value(1, &v), Some(0));
    let taken = taken.expect("a take for a connection is settled later");
    assert!(!taken.was_restored());
    assert_eq!(
        s.ticket_state(&key(1)),
        Some(TicketState {
            pending: true,
            restores: 0
        })
    );
    assert!(
        s.take_ticket(&key(1), &RULES).is_none(),
        "single use while pending"
    );

    s.settle_ticket(&taken, false, RULES.max_restores);
    assert_eq!(
        s.ticket_state(&key(1)),
        Some(TicketState {
            pending: false,
            restores: 1
        })
    );
    let (v, _, again) = s.take_ticket(&key(1), &RULES).expect("restored");
    assert_eq!(check_value(1, &v), Some(0), "the same session");
    let again = again.unwrap();
    assert!(again.was_restored());

    s.settle_ticket(&again, true, RULES.max_restores);
    assert_eq!(s.ticket_state(&key(1)), None, "erased once delivered");
    assert!(s.take_ticket(&key(1), &RULES).is_none());
    assert_eq!(s.counters().corrupt, 0);
}

#[test]
fn a_ticket_is_restored_at_most_the_configured_number_of_times() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&config(dir.path(), 1000), &clock);
    assert!(s.put(&key(7), &value(7, 0, 80), TTL));
    for round in 1..=2u8 {
        let (_, _, t) = s.take_ticket(&key(7), &RULES).expect("resumable");
        s.settle_ticket(&t.unwrap(), false, RULES.max_restores);
        assert_eq!(s.ticket_state(&key(7)).map(|t| t.restores), Some(round));
    }
    let (_, _, t) = s.take_ticket(&key(7), &RULES).expect("restored twice");
    s.settle_ticket(&t.unwrap(), false, RULES.max_restores);
    assert_eq!(
        s.ticket_state(&key(7)),
        None,
        "a third failure erases it: the bound holds"
    );

    // 0: strict single use, the take erases and there is nothing to settle.
    assert!(s.put(&key(8), &value(8, 0, 80), TTL));
    let strict = TakeRules {
        max_restores: 0,
        ..RULES
    };
    let (_, _, t) = s.take_ticket(&key(8), &strict).unwrap();
    assert!(t.is_none());
    assert_eq!(s.ticket_state(&key(8)), None);
}

#[test]
fn a_pending_ticket_nobody_settles_counts_as_restored_after_its_deadline() {
    let dir = tempdir();
    let cfg = config(dir.path(), 1000);
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    {
        let s = open_with_clock(&cfg, &clock);
        assert!(s.put(&key(3), &value(3, 0, 80), TTL));
        let (_, _, t) = s.take_ticket(&key(3), &RULES).unwrap();
        assert!(t.is_some());
        // The process holding the connection dies here: nobody settles.
    }
    let s = open_with_clock(&cfg, &clock);
    clock.advance(RULES.window.as_secs() - 1);
    assert!(
        s.take_ticket(&key(3), &RULES).is_none(),
        "still pending before the deadline"
    );
    clock.advance(2);
    let fresh_only = TakeRules {
        fresh_only: true,
        ..RULES
    };
    assert!(
        s.take_ticket(&key(3), &fresh_only).is_none(),
        "never again for a connection that may accept early data"
    );
    let (v, _, t) = s
        .take_ticket(&key(3), &RULES)
        .expect("restored by its deadline");
    assert_eq!(check_value(3, &v), Some(0));
    assert!(t.unwrap().was_restored());
    // Expiry still holds for a restored ticket.
    assert!(s.put(&key(4), &value(4, 0, 80), Duration::from_secs(30)));
    let (_, _, t4) = s.take_ticket(&key(4), &RULES).unwrap();
    s.settle_ticket(&t4.unwrap(), false, 2);
    clock.advance(31);
    assert!(s.take_ticket(&key(4), &RULES).is_none(), "expired");
}

#[test]
fn a_fresh_only_take_misses_on_a_restored_ticket_and_leaves_it() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    let s = open_with_clock(&config(dir.path(), 1000), &clock);
    assert!(s.put(&key(5), &value(5, 0, 80), TTL));
    let fresh_only = TakeRules {
        fresh_only: true,
        ..RULES
    };
    let (_, _, t) = s.take_ticket(&key(5), &fresh_only).expect("fresh");
    s.settle_ticket(&t.unwrap(), false, 2);
    assert!(s.take_ticket(&key(5), &fresh_only).is_none());
    assert_eq!(
        s.ticket_state(&key(5)),
        Some(TicketState {
            pending: false,
            restores: 1
        }),
        "left for a 1-RTT resumption"
    );
    assert!(s.take_ticket(&key(5), &RULES).is_some());
}

/// Threads race for the same tickets, round after round: exactly one take wins
/// each round (single use holds while pending), the winner restores, and after
/// `max_restores` restores the ticket is gone. Other threads churn the same
/// buckets with puts meanwhile (displacement moves pending entries).
#[test]
fn racing_threads_take_a_pending_ticket_exactly_once_per_round() {
    let dir = tempdir();
    let clock = Arc::new(ManualClock::new(1_800_000_000));
    // A small table, so the churn displaces and evicts around the tickets.
    let s = Arc::new(open_with_clock(&config(dir.path(), 300), &clock));
    const TICKETS: u64 = 40;
    const THREADS: usize = 6;
    for i in 0..TICKETS {
        assert!(s.put(&key(i), &value(i, 0, 80), TTL));
    }
    for round in 0..=RULES.max_restores {
        let wins = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(THREADS + 1));
        let racers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (s, wins, barrier) = (s.clone(), wins.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for i in 0..TICKETS {
                        if let Some((v, _, taken)) = s.take_ticket(&key(i), &RULES) {
                            assert_eq!(check_value(i, &v), Some(0), "thread {t}: intact");
                            wins.fetch_add(1, Ordering::Relaxed);
                            mine.push((i, taken.expect("pending")));
                        }
                    }
                    mine
                })
            })
            .collect();
        let churn = {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for j in 0..400u64 {
                    s.put(&key(10_000 + j), &value(10_000 + j, 1, 80), TTL);
                }
            })
        };
        let taken: Vec<_> = racers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        churn.join().unwrap();
        let won = wins.load(Ordering::Relaxed);
        assert_eq!(won, taken.len());
        let mut seen = std::collections::HashSet::new();
        for (i, _) in &taken {
            assert!(seen.insert(*i), "round {round}: ticket {i} taken twice");
        }
        // Churn may have evicted some tickets, never handed one out twice.
        assert!(
            won as u64 <= TICKETS,
            "round {round}: {won} takes of {TICKETS} tickets"
        );
        assert!(won > 0, "round {round}: some ticket survived the churn");
        for (_, t) in &taken {
            assert_eq!(t.was_restored(), round > 0);
            s.settle_ticket(t, false, RULES.max_restores);
        }
        for i in 0..TICKETS {
            if let Some(st) = s.ticket_state(&key(i)) {
                assert!(!st.pending, "round {round}: every take was settled");
                assert_eq!(st.restores, round + 1);
            }
        }
    }
    for i in 0..TICKETS {
        assert!(
            s.take_ticket(&key(i), &RULES).is_none(),
            "ticket {i} outlived its restore bound"
        );
    }
    assert_eq!(s.counters().corrupt, 0);
}
