//! Deploy windows: `Mon-Thu 08:00-17:00`, `daily 22:00-06:00`, `Sat,Sun 00:00-24:00`.
//!
//! A window is a set of weekdays and a time-of-day range in some time zone.
//! Pure: callers pass the instant, we answer whether it is inside and when the
//! next opening is.

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Which clock a window is read in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WindowTz {
    /// Each cell's own region time zone.
    #[default]
    Cell,
    Utc,
}

/// A parsed window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Allowed weekdays, Monday = 0.
    pub days: [bool; 7],
    /// Start, minutes after midnight.
    pub start: u32,
    /// End, minutes after midnight (may be < start: overnight; 1440 = midnight).
    pub end: u32,
    pub tz: WindowTz,
    /// The text it came from, for display.
    pub text: String,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day(s: &str) -> Result<usize, String> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let l = s.to_ascii_lowercase();
    DAYS.iter()
        .zip(FULL)
        .position(|(a, f)| l == *a || l == f)
        .ok_or_else(|| format!("unknown day {s:?} (use Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
}

fn hhmm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("invalid time {s:?} (use HH:MM)"))?;
    let h: u32 = h
        .parse()
        .map_err(|_| format!("invalid time {s:?} (use HH:MM)"))?;
    let m: u32 = m
        .parse()
        .map_err(|_| format!("invalid time {s:?} (use HH:MM)"))?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(format!("invalid time {s:?}"));
    }
    Ok(h * 60 + m)
}

/// Parse `DAYS HH:MM-HH:MM`, where DAYS is `daily`, a day, a range `Mon-Fri`, or
/// a comma list of those.
pub fn parse(text: &str, tz: WindowTz) -> Result<Window, String> {
    let mut parts = text.split_whitespace();
    let (days_s, hours_s) = match (parts.next(), parts.next(), parts.next()) {
        (Some(d), Some(h), None) => (d, h),
        _ => {
            return Err(format!(
                "invalid window {text:?}: expected `DAYS HH:MM-HH:MM`, for example `Mon-Thu 08:00-17:00`"
            ))
        }
    };
    let mut days = [false; 7];
    if days_s.eq_ignore_ascii_case("daily") || days_s == "*" {
        days = [true; 7];
    } else {
        for item in days_s.split(',') {
            match item.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    let mut i = a;
                    loop {
                        days[i] = true;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
                None => days[day(item)?] = true,
            }
        }
    }
    let (a, b) = hours_s
        .split_once('-')
        .ok_or_else(|| format!("invalid hours {hours_s:?}: expected HH:MM-HH:MM"))?;
    let (start, end) = (hhmm(a)?, hhmm(b)?);
    if start == end {
        return Err(format!("window {text:?} is empty (start equals end)"));
    }
    Ok(Window {
        days,
        start,
        end,
        tz,
        text: text.to_string(),
    })
}

fn weekday_index(w: Weekday) -> usize {
    w.num_days_from_monday() as usize
}

impl Window {
    fn zone(&self, cell_tz: &str) -> Tz {
        match self.tz {
            WindowTz::Utc => Tz::UTC,
            WindowTz::Cell => cell_tz.parse().unwrap_or(Tz::UTC),
        }
    }

    /// Is `now` inside the window, read in `cell_tz` when the window says `tz: cell`?
    pub fn contains(&self, now: DateTime<Utc>, cell_tz: &str) -> bool {
        let local = now.with_timezone(&self.zone(cell_tz));
        let mins = local.time().hour_min();
        let today = weekday_index(local.weekday());
        if self.start < self.end {
            self.days[today] && mins >= self.start && mins < self.end
        } else {
            // Overnight: the part after start belongs to today, the part
            // before end belongs to the day that started yesterday.
            let yesterday = (today + 6) % 7;
            (self.days[today] && mins >= self.start) || (self.days[yesterday] && mins < self.end)
        }
    }

    /// The first instant at or after `now` inside the window (within 8 days).
    pub fn next_open(&self, now: DateTime<Utc>, cell_tz: &str) -> Option<DateTime<Utc>> {
        if self.contains(now, cell_tz) {
            return Some(now);
        }
        let zone = self.zone(cell_tz);
        let local_date = now.with_timezone(&zone).date_naive();
        (0..9)
            .filter_map(|i| {
                let date = local_date + Duration::days(i);
                if !self.days[weekday_index(date.weekday())] {
                    return None;
                }
                let t = NaiveTime::from_hms_opt(self.start / 60 % 24, self.start % 60, 0)?;
                let local = zone.from_local_datetime(&date.and_time(t)).earliest()?;
                let utc = local.with_timezone(&Utc);
                (utc >= now).then_some(utc)
            })
            .min()
    }
}

trait HourMin {
    fn hour_min(&self) -> u32;
}
impl HourMin for NaiveTime {
    fn hour_min(&self) -> u32 {
        use chrono::Timelike;
        self.hour() * 60 + self.minute()
    }
}

/// Is `now` inside any of `windows` (no windows: always)?
pub fn allowed(windows: &[Window], now: DateTime<Utc>, cell_tz: &str) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(now, cell_tz))
}

/// The next instant at or after `now` inside any window.
pub fn next_allowed(
    windows: &[Window],
    now: DateTime<Utc>,
    cell_tz: &str,
) -> Option<DateTime<Utc>> {
    if allowed(windows, now, cell_tz) {
        return Some(now);
    }
    windows
        .iter()
        .filter_map(|w| w.next_open(now, cell_tz))
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|d| d.with_timezone(&Utc))
            .expect("time")
    }

    #[test]
    fn weekday_hours_in_utc() {
        let w = parse("Mon-Thu 08:00-17:00", WindowTz::Utc).expect("parse");
        // 2026-11-23 is a Monday.
        assert!(w.contains(at("2026-11-23T09:00:00Z"), "UTC"));
        assert!(!w.contains(at("2026-11-23T17:00:00Z"), "UTC"));
        assert!(!w.contains(at("2026-11-27T09:00:00Z"), "UTC")); // Friday
        assert_eq!(
            w.next_open(at("2026-11-26T18:00:00Z"), "UTC"),
            Some(at("2026-11-30T08:00:00Z"))
        );
    }

    #[test]
    fn cell_time_zone_is_used() {
        let w = parse("daily 08:00-17:00", WindowTz::Cell).expect("parse");
        // 09:00 UTC is 04:00 in New York, 20:00 in Sydney (summer time).
        assert!(!w.contains(at("2026-11-23T09:00:00Z"), "America/New_York"));
        assert!(!w.contains(at("2026-11-23T09:00:00Z"), "Australia/Sydney"));
        assert!(w.contains(at("2026-11-23T14:00:00Z"), "America/New_York"));
        assert_eq!(
            w.next_open(at("2026-11-23T09:00:00Z"), "America/New_York"),
            Some(at("2026-11-23T13:00:00Z"))
        );
    }

    #[test]
    fn overnight_and_lists() {
        let w = parse("Fri,Sat 22:00-06:00", WindowTz::Utc).expect("parse");
        assert!(w.contains(at("2026-11-27T23:00:00Z"), "UTC")); // Fri night
        assert!(w.contains(at("2026-11-28T05:00:00Z"), "UTC")); // Sat early, started Fri
        assert!(!w.contains(at("2026-11-23T05:00:00Z"), "UTC")); // Mon early, Sun not allowed
    }

    #[test]
    fn rejects_nonsense() {
        assert!(parse("Funday 08:00-09:00", WindowTz::Utc).is_err());
        assert!(parse("Mon 8-9", WindowTz::Utc).is_err());
        assert!(parse("Mon 08:00-08:00", WindowTz::Utc).is_err());
        assert!(parse("Mon 25:00-26:00", WindowTz::Utc).is_err());
        assert!(parse("Mon", WindowTz::Utc).is_err());
    }
}
