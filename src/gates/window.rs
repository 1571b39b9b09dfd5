//! Maintenance windows: weekly, in an IANA time zone. A window starts on
//! each listed day at `start` local time and lasts `length` of real
//! (elapsed) time, so a 2h window across a DST change is still 2 hours.
//! A start time that does not exist that day (skipped by spring-forward)
//! moves forward by the gap; one that happens twice (fall-back) uses the
//! first. No windows configured means always open.

use jiff::{SignedDuration, Timestamp, ToSpan, Zoned};

use super::Verdict;
use crate::config::Window;

pub(crate) const NAME: &str = super::GateName::Window.as_str();

/// A window wide open from `start` to `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Occurrence {
    pub start: Zoned,
    pub end: Zoned,
}

/// Occurrences of `window` whose start day lies within `days_back` days
/// before and `days_ahead` days after the local date of `now`, in order.
fn occurrences(
    window: &Window,
    now: Timestamp,
    days_back: i64,
    days_ahead: i64,
) -> Vec<Occurrence> {
    let tz = &window.time_zone;
    let today = now.to_zoned(tz.clone()).date();
    let length = SignedDuration::try_from(window.length).unwrap_or(SignedDuration::MAX);
    let mut out = Vec::new();
    for offset in -days_back..=days_ahead {
        let Ok(date) = today.checked_add(offset.days()) else {
            continue;
        };
        if !window.days.contains(&date.weekday()) {
            continue;
        }
        // Compatible disambiguation: gap -> later, fold -> earlier.
        let Ok(start) = date.to_datetime(window.start).to_zoned(tz.clone()) else {
            continue;
        };
        let Ok(end) = start.checked_add(length) else {
            continue;
        };
        out.push(Occurrence { start, end });
    }
    out
}

/// The open occurrence of `window` at `now`, if any.
fn open_occurrence(window: &Window, now: Timestamp) -> Option<Occurrence> {
    // Windows last at most 7 days, so 8 days back covers every start.
    occurrences(window, now, 8, 0)
        .into_iter()
        .filter(|o| o.start.timestamp() <= now && now < o.end.timestamp())
        .max_by_key(|o| o.end.timestamp())
}

/// Whether any window is open at `now` (always, when none are configured).
pub(crate) fn is_open(windows: &[Window], now: Timestamp) -> bool {
    windows.is_empty() || windows.iter().any(|w| open_occurrence(w, now).is_some())
}

/// The next window start strictly after `now`, in that window's time zone.
/// `None` when no windows are configured.
pub(crate) fn next_opening(windows: &[Window], now: Timestamp) -> Option<Zoned> {
    windows
        .iter()
        .flat_map(|w| occurrences(w, now, 0, 8))
        .filter(|o| o.start.timestamp() > now)
        .min_by_key(|o| o.start.timestamp())
        .map(|o| o.start)
}

/// `Tue 02:00 Europe/London`.
pub(crate) fn describe(at: &Zoned) -> String {
    let tz = at.time_zone().iana_name().unwrap_or("UTC").to_string();
    format!("{} {tz}", at.strftime("%a %H:%M"))
}

pub(crate) fn evaluate(windows: &[Window], now: Timestamp) -> Verdict {
    if is_open(windows, now) {
        return Verdict::Pass;
    }
    match next_opening(windows, now) {
        Some(next) => Verdict::Block(format!("window opens {}", describe(&next))),
        None => Verdict::Block("outside every maintenance window".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::Time;
    use jiff::civil::Weekday;
    use jiff::tz::TimeZone;
    use std::time::Duration;

    fn window(days: &[Weekday], start: &str, length_min: u64, tz: &str) -> Window {
        let (h, m) = start.split_once(':').unwrap();
        Window {
            days: days.to_vec(),
            start: Time::new(h.parse().unwrap(), m.parse().unwrap(), 0, 0).unwrap(),
            length: Duration::from_secs(length_min * 60),
            time_zone: TimeZone::get(tz).unwrap(),
            time_zone_name: tz.to_string(),
        }
    }

    fn at(s: &str) -> Timestamp {
        // Accepts "2025-03-30T00:29:59+00:00[Europe/London]" style or UTC.
        s.parse::<Zoned>()
            .map(|z| z.timestamp())
            .or_else(|_| s.parse::<Timestamp>())
            .unwrap()
    }

    use Weekday::*;

    #[test]
    fn no_windows_means_always_open() {
        assert!(is_open(&[], at("2025-01-01T12:00:00Z")));
        assert_eq!(evaluate(&[], at("2025-01-01T12:00:00Z")), Verdict::Pass);
        assert_eq!(next_opening(&[], at("2025-01-01T12:00:00Z")), None);
    }

    #[test]
    fn simple_window_edges_are_inclusive_start_exclusive_end() {
        // 2025-01-07 is a Tuesday; London is on GMT in January.
        let w = [window(&[Tuesday], "02:00", 120, "Europe/London")];
        assert!(!is_open(&w, at("2025-01-07T01:59:59Z")));
        assert!(is_open(&w, at("2025-01-07T02:00:00Z")));
        assert!(is_open(&w, at("2025-01-07T03:59:59Z")));
        assert!(!is_open(&w, at("2025-01-07T04:00:00Z")));
        assert_eq!(
            evaluate(&w, at("2025-01-06T12:00:00Z")),
            Verdict::Block("window opens Tue 02:00 Europe/London".into())
        );
    }

    #[test]
    fn window_wraps_past_midnight_into_the_next_day() {
        // Sat 23:00 for 3h: open Sun 01:30 although Sunday is not listed.
        let w = [window(&[Saturday], "23:00", 180, "UTC")];
        assert!(is_open(&w, at("2025-01-04T23:30:00Z")));
        assert!(is_open(&w, at("2025-01-05T01:30:00Z")));
        assert!(!is_open(&w, at("2025-01-05T02:00:00Z")));
        // A Sunday-evening start does not open Sunday morning.
        let w = [window(&[Sunday], "23:00", 180, "UTC")];
        assert!(!is_open(&w, at("2025-01-05T01:30:00Z")));
        assert!(is_open(&w, at("2025-01-06T01:30:00Z")));
    }

    #[test]
    fn time_zone_is_respected() {
        // 02:00 in New York (EST, UTC-5) is 07:00 UTC.
        let w = [window(&[Tuesday], "02:00", 60, "America/New_York")];
        assert!(!is_open(&w, at("2025-01-07T02:30:00Z")));
        assert!(is_open(&w, at("2025-01-07T07:30:00Z")));
    }

    #[test]
    fn dst_spring_forward_keeps_real_length() {
        // Europe/London 2025-03-30 (Sun): 01:00 GMT jumps to 02:00 BST.
        // A 00:30 start for 2h runs 00:30 GMT .. 03:30 BST (= 02:30 UTC).
        let w = [window(&[Sunday], "00:30", 120, "Europe/London")];
        assert!(!is_open(&w, at("2025-03-30T00:29:59Z")));
        assert!(is_open(&w, at("2025-03-30T00:30:00Z")));
        assert!(is_open(&w, at("2025-03-30T02:29:59Z")));
        assert!(!is_open(&w, at("2025-03-30T02:30:00Z")));
        // Opening announced in local time.
        assert_eq!(
            describe(&next_opening(&w, at("2025-03-29T12:00:00Z")).unwrap()),
            "Sun 00:30 Europe/London"
        );
    }

    #[test]
    fn dst_spring_forward_start_in_the_gap_moves_forward() {
        // 01:30 does not exist on 2025-03-30 in London: it starts at 02:30
        // BST (01:30 UTC), one hour long.
        let w = [window(&[Sunday], "01:30", 60, "Europe/London")];
        let next = next_opening(&w, at("2025-03-29T12:00:00Z")).unwrap();
        assert_eq!(next.timestamp(), at("2025-03-30T01:30:00Z"));
        assert_eq!(next.strftime("%H:%M %Z").to_string(), "02:30 BST");
        assert!(!is_open(&w, at("2025-03-30T01:29:59Z")));
        assert!(is_open(&w, at("2025-03-30T02:29:59Z")));
        assert!(!is_open(&w, at("2025-03-30T02:30:00Z")));
    }

    #[test]
    fn dst_fall_back_window_happens_once_with_real_length() {
        // Europe/London 2025-10-26 (Sun): 02:00 BST falls back to 01:00 GMT.
        // 00:30 BST (23:30 UTC Sat) for 2h ends at 01:30 UTC = 01:30 GMT.
        let w = [window(&[Sunday], "00:30", 120, "Europe/London")];
        assert!(!is_open(&w, at("2025-10-25T23:29:59Z")));
        assert!(is_open(&w, at("2025-10-25T23:30:00Z")));
        assert!(is_open(&w, at("2025-10-26T01:29:59Z")));
        assert!(!is_open(&w, at("2025-10-26T01:30:00Z")));
        // 01:30 happens twice; the window starts at the first (BST) one.
        let w = [window(&[Sunday], "01:30", 60, "Europe/London")];
        let next = next_opening(&w, at("2025-10-25T12:00:00Z")).unwrap();
        assert_eq!(next.timestamp(), at("2025-10-26T00:30:00Z"));
        assert!(is_open(&w, at("2025-10-26T01:00:00Z")));
        // Not reopened by the second 01:30 (01:30 GMT).
        assert!(!is_open(&w, at("2025-10-26T01:45:00Z")));
    }

    #[test]
    fn several_windows_any_one_opens_and_next_is_earliest() {
        let w = [
            window(&[Tuesday], "02:00", 60, "Europe/London"),
            window(&[Saturday, Sunday], "10:00", 240, "America/New_York"),
        ];
        // Sat 2025-01-11 16:00 UTC = 11:00 EST: the second is open.
        assert!(is_open(&w, at("2025-01-11T16:00:00Z")));
        assert!(!is_open(&w, at("2025-01-11T20:00:00Z")));
        // From Sunday evening the next is Tuesday in London.
        let next = next_opening(&w, at("2025-01-12T20:00:00Z")).unwrap();
        assert_eq!(describe(&next), "Tue 02:00 Europe/London");
        // From Wednesday the next is Saturday in New York.
        let next = next_opening(&w, at("2025-01-08T12:00:00Z")).unwrap();
        assert_eq!(describe(&next), "Sat 10:00 America/New_York");
        assert_eq!(next.timestamp(), at("2025-01-11T15:00:00Z"));
    }

    #[test]
    fn next_opening_while_open_is_the_following_one() {
        let w = [window(
            &[
                Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday,
            ],
            "00:00",
            60,
            "UTC",
        )];
        let next = next_opening(&w, at("2025-01-07T00:30:00Z")).unwrap();
        assert_eq!(next.timestamp(), at("2025-01-08T00:00:00Z"));
    }

    #[test]
    fn week_long_window_wraps_to_the_next_week() {
        let w = [window(&[Monday], "00:00", 7 * 24 * 60 - 60, "UTC")];
        // Sunday 23:30: the window that started last Monday closed at 23:00.
        assert!(!is_open(&w, at("2025-01-12T23:30:00Z")));
        assert!(is_open(&w, at("2025-01-12T22:30:00Z")));
        assert_eq!(
            next_opening(&w, at("2025-01-12T23:30:00Z"))
                .unwrap()
                .timestamp(),
            at("2025-01-13T00:00:00Z")
        );
    }
}
