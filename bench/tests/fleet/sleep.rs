//! Devices that sleep for hours, days or months, on simulated time: which sleep
//! patterns resume with TLS 1.2 session IDs, TLS 1.3 stateful tickets (24 h) and
//! the store's 7-day TLS 1.3 tickets. Real rustls on both sides, warmtls'
//! connection driver and a real store file; the devices' clock, rustls' and the
//! store's are one simulated clock.
use std::time::Duration;

use warmtls_bench::fleet::sleep::{self, ProfileResult, SleepMode, SleepSim};

const DAY: Duration = Duration::from_secs(86_400);
/// Either side of each boundary: 24 h (stateful tickets), 7 days (store tickets).
const PROFILES: &str = "20%:30m,10%:23h,10%:25h,20%:6d,20%:8d,20%:60d";

fn resumed_pct(mode: SleepMode, session_lifetime: Duration) -> Vec<f64> {
    let mut sim = SleepSim::new(sleep::parse_profiles(PROFILES).unwrap(), 40, mode);
    sim.session_lifetime = session_lifetime;
    // Two sleeps each: the session a resumption leaves behind must resume too.
    // 2 × 60 days is past the default 90-day lineage cap (tests/session_lineage.rs).
    sim.wakes = 2;
    sim.max_session_age = 180 * DAY;
    let results: Vec<ProfileResult> = sleep::simulate(&sim).unwrap();
    for r in &results {
        assert_eq!(r.failed, 0, "{mode}: {r:?}");
        assert_eq!(r.wakes, r.devices * 2, "{mode}: {r:?}");
        assert!(r.devices >= 4, "{r:?}");
    }
    results.iter().map(ProfileResult::resumed_pct).collect()
}

//                      30m    23h    25h    6d     8d    60d
const ALL: [f64; 6] = [100.0, 100.0, 100.0, 100.0, 100.0, 100.0];

#[test]
fn tls12_session_ids_resume_after_60_days_when_session_lifetime_covers_the_sleep() {
    let long = 90 * DAY;
    assert_eq!(resumed_pct(SleepMode::Tls12, long), ALL);
    assert_eq!(resumed_pct(SleepMode::Tls12TicketerServer, long), ALL);
}

#[test]
fn tls12_session_ids_expire_with_the_default_7_day_session_lifetime() {
    let default = SleepSim::new(Vec::new(), 1, SleepMode::Tls12).session_lifetime;
    assert_eq!(default, 7 * DAY);
    let expected = [100.0, 100.0, 100.0, 100.0, 0.0, 0.0];
    assert_eq!(resumed_pct(SleepMode::Tls12, default), expected);
    assert_eq!(
        resumed_pct(SleepMode::Tls12TicketerServer, default),
        expected
    );
}

#[test]
fn tls13_stateful_tickets_do_not_survive_a_sleep_longer_than_a_day() {
    assert_eq!(
        resumed_pct(SleepMode::Tls13Stateful, 90 * DAY),
        [100.0, 100.0, 0.0, 0.0, 0.0, 0.0]
    );
}

#[test]
fn tls13_store_tickets_survive_a_sleep_of_up_to_7_days() {
    assert_eq!(
        resumed_pct(SleepMode::Tls13StoreTicketer, 90 * DAY),
        [100.0, 100.0, 100.0, 100.0, 0.0, 0.0]
    );
}
