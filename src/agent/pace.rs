//! How long a waiting node waits. Pure, so the herd behaviour is tested
//! without clocks: when a slot frees or a soak ends, the waiting nodes come
//! back spread out, and the first to find the slot free takes it before most
//! of the others look, so few of them pay for the cluster-wide gates.

use std::time::Duration;

use jiff::Timestamp;

/// A blocked cluster gate with no known end (an alert, a NotReady node, a
/// pause) is asked again after at most this long, spread over its second half.
pub(super) const BLOCKED_RECHECK: Duration = Duration::from_secs(180);
/// Longest pause after a Lease-change wake: a waiting node still takes a
/// freed slot within 2 s of its release.
pub(super) const HERD_JITTER: Duration = Duration::from_secs(1);
/// Longest spread of the wake-ups at the known end of a block (the soak).
pub(super) const END_SPREAD: Duration = Duration::from_secs(60);

/// A fraction in [0, 1): fastrand's per-thread generator, seeded from the
/// OS (jitter needs spread, not secrecy).
pub(super) fn random_fraction() -> f64 {
    fastrand::f64()
}

/// The pause before re-reading a Lease that looked free: `r` in [0, 1).
pub(super) fn herd_jitter(check_interval: Duration, r: f64) -> Duration {
    HERD_JITTER
        .min(check_interval / 2)
        .mul_f64(r.clamp(0.0, 1.0))
}

/// How long to wait after the cluster-wide gates blocked: until their known
/// end, spread a little so the waiters do not all return together; with no
/// known end, a long jittered re-check. Never longer than `check_interval`.
/// The Lease watch still wakes the node earlier when a slot changes hands.
///
/// A known end at most the herd jitter away (the soak after the reboot
/// whose release woke this node) is spread like that wake-up, not over a
/// minute: these waiters are already spread by the herd jitter, and a minute
/// would leave the slot unused until the first of them comes back (half a
/// minute on average with one waiter left).
pub(super) fn after_block(
    now: Timestamp,
    blocked_until: Option<Timestamp>,
    check_interval: Duration,
    r: f64,
) -> Duration {
    let r = r.clamp(0.0, 1.0);
    let wait = match blocked_until {
        Some(end) => {
            let left = Duration::try_from(end.duration_since(now)).unwrap_or_default();
            let spread = END_SPREAD.min(check_interval / 5);
            let spread = if left <= HERD_JITTER {
                spread.min(HERD_JITTER)
            } else {
                spread
            };
            left + spread.mul_f64(r)
        }
        None => {
            let base = BLOCKED_RECHECK.min(check_interval);
            base / 2 + (base / 2).mul_f64(r)
        }
    };
    wait.min(check_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn random_fractions_are_in_range_and_vary() {
        let v: Vec<f64> = (0..64).map(|_| random_fraction()).collect();
        assert!(v.iter().all(|r| (0.0..1.0).contains(r)), "{v:?}");
        let distinct: std::collections::BTreeSet<u64> = v.iter().map(|r| r.to_bits()).collect();
        assert!(distinct.len() > 60, "{v:?}");
    }

    #[test]
    fn herd_jitter_keeps_the_two_second_promise() {
        assert_eq!(herd_jitter(FIVE_MIN, 0.0), Duration::ZERO);
        assert_eq!(herd_jitter(FIVE_MIN, 0.5), Duration::from_millis(500));
        assert!(herd_jitter(FIVE_MIN, 0.999_999) < Duration::from_secs(1));
        // Short check intervals (tests, simulations) shrink it.
        assert_eq!(
            herd_jitter(Duration::from_millis(100), 1.0),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn known_end_waits_until_it_plus_a_spread_bounded_by_the_check_interval() {
        let now = t("2025-01-01T12:00:00Z");
        let end = t("2025-01-01T12:02:00Z");
        assert_eq!(
            after_block(now, Some(end), FIVE_MIN, 0.0),
            Duration::from_secs(120)
        );
        assert_eq!(
            after_block(now, Some(end), FIVE_MIN, 0.5),
            Duration::from_secs(150)
        );
        // A 24h soak: come back at the check interval, not in 24h.
        assert_eq!(
            after_block(now, Some(t("2025-01-02T12:00:00Z")), FIVE_MIN, 0.3),
            FIVE_MIN
        );
        // Already over (clock moved on): only the herd jitter's spread.
        assert_eq!(
            after_block(now, Some(t("2025-01-01T11:00:00Z")), FIVE_MIN, 0.5),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_soak_ending_within_the_herd_jitter_is_not_spread_over_a_minute() {
        let now = t("2025-01-01T12:00:00Z");
        let soon = t("2025-01-01T12:00:00.400Z");
        assert_eq!(
            after_block(now, Some(soon), FIVE_MIN, 0.5),
            Duration::from_millis(900)
        );
        assert!(after_block(now, Some(soon), FIVE_MIN, 0.999) < Duration::from_millis(1400));
        // Never wider than the spread a short check interval gives.
        assert_eq!(
            after_block(now, Some(soon), Duration::from_secs(2), 1.0),
            Duration::from_millis(800)
        );
        // Just over the jitter away: the long soak's spread again.
        let later = t("2025-01-01T12:00:01.001Z");
        assert_eq!(
            after_block(now, Some(later), FIVE_MIN, 0.5),
            Duration::from_millis(31_001)
        );
    }

    #[test]
    fn unknown_end_rechecks_much_later_than_thirty_seconds_and_spread_out() {
        let now = t("2025-01-01T12:00:00Z");
        let lo = after_block(now, None, FIVE_MIN, 0.0);
        let hi = after_block(now, None, FIVE_MIN, 0.999);
        assert_eq!(lo, Duration::from_secs(90));
        assert!(
            hi > Duration::from_secs(179) && hi <= BLOCKED_RECHECK,
            "{hi:?}"
        );
        // Bounded by a short check interval.
        assert_eq!(
            after_block(now, None, Duration::from_secs(10), 0.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            after_block(now, None, Duration::from_secs(10), 1.0),
            Duration::from_secs(10)
        );
    }
}
