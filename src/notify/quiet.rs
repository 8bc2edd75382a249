//! Quiet hours and digest windows: when may a channel's message leave? Pure
//! functions of the channel's settings, the message and "now".
//!
//! A quiet range is wall-clock time in an IANA zone. Its instants are found per
//! local day: a start or end that falls in a skipped hour (spring forward) moves to
//! the next valid instant; one in a repeated hour (fall back) takes the first, so a
//! range is never doubled.
use crate::domain::Event;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Utc,
    Weekday,
};
use chrono_tz::Tz;

/// One quiet range: `from`–`to` (crossing midnight when `to` ≤ `from`), starting on
/// `days` (all days when `None`); without times, the whole of each listed day.
#[derive(Debug, Clone, PartialEq)]
pub struct QuietRange {
    pub tz: Tz,
    /// `None`: whole days.
    pub times: Option<(NaiveTime, NaiveTime)>,
    pub days: Option<Vec<Weekday>>,
}

/// A channel's deferral settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deferral {
    pub quiet: Vec<QuietRange>,
    /// Events that never wait.
    pub urgent: Vec<Event>,
    /// Outside quiet hours, fold non-urgent messages arriving within this window.
    pub digest: Option<std::time::Duration>,
}

impl Deferral {
    /// Whether anything is ever held on this channel.
    pub fn is_active(&self) -> bool {
        !self.quiet.is_empty() || self.digest.is_some()
    }

    /// Whether a message of `event` created at `at` is held for a digest.
    pub fn holds(&self, event: Event, at: DateTime<Utc>) -> bool {
        if self.urgent.contains(&event) {
            return false;
        }
        self.digest.is_some() || quiet_until(&self.quiet, at).is_some()
    }

    /// When what is held goes out as one digest: at the end of the quiet period
    /// in force at `now`, else at the end of the digest window opened by the oldest
    /// held message (`oldest`), else now.
    pub fn release_at(&self, oldest: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
        if let Some(end) = quiet_until(&self.quiet, now) {
            return end;
        }
        let window_end = self
            .digest
            .and_then(|d| Duration::from_std(d).ok())
            .and_then(|d| oldest.checked_add_signed(d))
            .unwrap_or(oldest);
        window_end.max(now)
    }
}

/// The local day's instant for `time`: the next valid one when the clock skips it,
/// the first when it repeats.
fn instant(tz: Tz, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
    let mut local = day.and_time(time);
    // A skipped hour is at most a few hours long anywhere; step by minutes.
    for _ in 0..(6 * 60) {
        match tz.from_local_datetime(&local) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => {
                local = (local + Duration::minutes(1))
                    .with_second(0)
                    .unwrap_or(local + Duration::minutes(1));
            }
        }
    }
    tz.from_utc_datetime(&local).with_timezone(&Utc)
}

/// The quiet periods of `r` that start on local days `first..=last`.
fn periods(
    r: &QuietRange,
    first: NaiveDate,
    last: NaiveDate,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut out = Vec::new();
    let mut day = first;
    while day <= last {
        if r.days.as_ref().is_none_or(|d| d.contains(&day.weekday())) {
            let next = day.succ_opt().unwrap_or(day);
            let (start, end) = match r.times {
                None => (
                    instant(r.tz, day, NaiveTime::MIN),
                    instant(r.tz, next, NaiveTime::MIN),
                ),
                Some((from, to)) => {
                    let end_day = if to <= from { next } else { day };
                    (instant(r.tz, day, from), instant(r.tz, end_day, to))
                }
            };
            if start < end {
                out.push((start, end));
            }
        }
        match day.succ_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
    out
}

/// If `at` is in quiet hours, when they end (adjoining and overlapping periods,
/// of any range, are one); else `None`.
pub fn quiet_until(ranges: &[QuietRange], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if ranges.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for r in ranges {
        let today = at.with_timezone(&r.tz).date_naive();
        let first = today - Duration::days(2);
        // Periods starting up to 8 days on, so a chain of adjoining days is followed.
        let last = today + Duration::days(8);
        all.extend(periods(r, first, last));
    }
    all.sort();
    let mut end: Option<DateTime<Utc>> = None;
    for (s, e) in all {
        match end {
            None if s <= at && at < e => end = Some(e),
            Some(cur) if s <= cur && e > cur => end = Some(e),
            _ => {}
        }
    }
    end
}

/// The start of the next quiet period after `at` (for display).
pub fn next_quiet(ranges: &[QuietRange], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    ranges
        .iter()
        .flat_map(|r| {
            let today = at.with_timezone(&r.tz).date_naive();
            periods(r, today - Duration::days(1), today + Duration::days(8))
        })
        .map(|(s, _)| s)
        .filter(|s| *s > at)
        .min()
}

/// Parses `HH:MM` or `HH:MM:SS`.
pub fn parse_time(s: &str) -> Option<NaiveTime> {
    NaiveTime::parse_from_str(s, "%H:%M:%S")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()
        .filter(|_| s.len() == 5 || s.len() == 8)
}

/// `mon`…`sun` (or full names).
pub fn parse_day(s: &str) -> Option<Weekday> {
    s.to_ascii_lowercase().parse().ok()
}

/// The length of a range, whatever the day (`to` ≤ `from` crosses midnight).
pub fn length(from: NaiveTime, to: NaiveTime) -> Duration {
    let d = to - from;
    if d <= Duration::zero() {
        d + Duration::days(1)
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn range(tz: &str, from: &str, to: &str) -> QuietRange {
        QuietRange {
            tz: tz.parse().unwrap(),
            times: Some((parse_time(from).unwrap(), parse_time(to).unwrap())),
            days: None,
        }
    }

    #[test]
    fn london_evenings_across_both_2026_clock_changes() {
        let q = [range("Europe/London", "20:00", "08:00")];
        // A normal winter night: GMT = UTC.
        assert_eq!(
            quiet_until(&q, utc("2026-01-10T21:00:00Z")),
            Some(utc("2026-01-11T08:00:00Z"))
        );
        // Clocks go forward on 29 March 2026 at 01:00 GMT: the night is an hour shorter.
        assert_eq!(
            quiet_until(&q, utc("2026-03-28T21:00:00Z")),
            Some(utc("2026-03-29T07:00:00Z"))
        );
        assert_eq!(
            quiet_until(&q, utc("2026-03-29T06:59:59Z")),
            Some(utc("2026-03-29T07:00:00Z"))
        );
        assert_eq!(quiet_until(&q, utc("2026-03-29T07:00:00Z")), None);
        // Back on 25 October 2026 at 01:00 GMT (02:00 BST): an hour longer.
        assert_eq!(
            quiet_until(&q, utc("2026-10-24T19:00:00Z")),
            Some(utc("2026-10-25T08:00:00Z"))
        );
        assert_eq!(
            quiet_until(&q, utc("2026-10-24T18:59:59Z")),
            None,
            "19:59:59 BST"
        );
        // The edges: 19:59:59.9 local goes at once; 20:00 waits until 08:00.
        assert_eq!(quiet_until(&q, utc("2026-07-01T18:59:59.900Z")), None);
        assert_eq!(
            quiet_until(&q, utc("2026-07-01T19:00:00Z")),
            Some(utc("2026-07-02T07:00:00Z"))
        );
    }

    #[test]
    fn los_angeles_and_kolkata() {
        let la = [range("America/Los_Angeles", "20:00", "08:00")];
        // 8 March 2026 02:00 PST → 03:00 PDT.
        assert_eq!(
            quiet_until(&la, utc("2026-03-08T04:00:00Z")),
            Some(utc("2026-03-08T15:00:00Z"))
        );
        // 1 November 2026 02:00 PDT → 01:00 PST.
        assert_eq!(
            quiet_until(&la, utc("2026-11-01T03:00:00Z")),
            Some(utc("2026-11-01T16:00:00Z"))
        );
        let ist = [range("Asia/Kolkata", "22:30", "06:15")];
        assert_eq!(
            quiet_until(&ist, utc("2026-05-01T16:59:59Z")),
            None,
            "22:29:59 IST"
        );
        assert_eq!(
            quiet_until(&ist, utc("2026-05-01T17:00:00Z")),
            Some(utc("2026-05-02T00:45:00Z"))
        );
    }

    #[test]
    fn a_start_in_a_skipped_hour_starts_at_the_next_valid_instant_and_a_repeated_hour_is_not_doubled()
     {
        // 01:30 does not exist in London on 29 March 2026; the range starts at 02:00 BST (01:00 UTC).
        let q = [range("Europe/London", "01:30", "03:00")];
        assert_eq!(quiet_until(&q, utc("2026-03-29T00:59:00Z")), None);
        assert_eq!(
            quiet_until(&q, utc("2026-03-29T01:00:00Z")),
            Some(utc("2026-03-29T02:00:00Z"))
        );
        // 01:00–01:30 happens twice on 25 October 2026: quiet only the first time.
        let q = [range("Europe/London", "01:00", "01:30")];
        assert_eq!(
            quiet_until(&q, utc("2026-10-25T00:10:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(quiet_until(&q, utc("2026-10-25T01:10:00Z")), None);
    }

    #[test]
    fn days_alone_are_whole_days_and_with_times_the_days_a_range_starts() {
        let weekend = [QuietRange {
            tz: "Europe/London".parse().unwrap(),
            times: None,
            days: Some(vec![Weekday::Sat, Weekday::Sun]),
        }];
        // Friday 3 July 2026 23:00 BST is not quiet; Saturday 00:00 to Monday 00:00 is, as one.
        assert_eq!(quiet_until(&weekend, utc("2026-07-03T21:59:00Z")), None);
        assert_eq!(
            quiet_until(&weekend, utc("2026-07-04T10:00:00Z")),
            Some(utc("2026-07-05T23:00:00Z"))
        );
        let fridays = [QuietRange {
            days: Some(vec![Weekday::Fri]),
            ..range("Europe/London", "22:00", "02:00")
        }];
        // Starts Friday 22:00 and runs into Saturday; Saturday 22:00 is not quiet.
        assert_eq!(
            quiet_until(&fridays, utc("2026-07-04T00:30:00Z")),
            Some(utc("2026-07-04T01:00:00Z"))
        );
        assert_eq!(quiet_until(&fridays, utc("2026-07-04T21:30:00Z")), None);
        // Two adjoining ranges are one quiet period.
        let two = [
            range("UTC", "20:00", "23:00"),
            range("UTC", "23:00", "06:00"),
        ];
        assert_eq!(
            quiet_until(&two, utc("2026-07-01T21:00:00Z")),
            Some(utc("2026-07-02T06:00:00Z"))
        );
        assert_eq!(
            next_quiet(&two, utc("2026-07-02T07:00:00Z")),
            Some(utc("2026-07-02T20:00:00Z"))
        );
    }

    #[test]
    fn held_messages_leave_at_the_end_of_quiet_hours_or_of_their_window() {
        let d = Deferral {
            quiet: vec![range("UTC", "20:00", "08:00")],
            urgent: vec![Event::Failed],
            digest: None,
        };
        let night = utc("2026-07-01T22:00:00Z");
        assert!(d.holds(Event::Succeeded, night));
        assert!(!d.holds(Event::Failed, night), "urgent never waits");
        assert!(!d.holds(Event::Succeeded, utc("2026-07-01T19:59:59.900Z")));
        assert_eq!(d.release_at(night, night), utc("2026-07-02T08:00:00Z"));
        // After quiet hours (a late start, a reload) it goes at once.
        let morning = utc("2026-07-02T09:00:00Z");
        assert_eq!(d.release_at(night, morning), morning);
        let w = Deferral {
            digest: Some(std::time::Duration::from_secs(600)),
            ..Default::default()
        };
        let t = utc("2026-07-01T12:00:00Z");
        assert!(w.holds(Event::Succeeded, t));
        assert_eq!(
            w.release_at(t, t + Duration::seconds(5)),
            t + Duration::minutes(10)
        );
        assert_eq!(
            w.release_at(t, t + Duration::hours(1)),
            t + Duration::hours(1)
        );
    }

    #[test]
    fn times_and_days_parse_strictly() {
        assert_eq!(parse_time("08:00"), NaiveTime::from_hms_opt(8, 0, 0));
        assert_eq!(parse_time("23:59:30"), NaiveTime::from_hms_opt(23, 59, 30));
        for bad in ["8:00", "24:00", "08:60", "0800", "08:00pm", ""] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        assert_eq!(parse_day("sat"), Some(Weekday::Sat));
        assert_eq!(parse_day("Sunday"), Some(Weekday::Sun));
        assert_eq!(parse_day("someday"), None);
        assert_eq!(
            length(parse_time("20:00").unwrap(), parse_time("08:00").unwrap()),
            Duration::hours(12)
        );
    }
}
