//! Human durations: `90s`, `10m`, `2h`, `1h30m`, `250ms`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written the way operators write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub fn millis(&self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Parse `90s`, `10m`, `2h`, `1d`, `250ms` and sums such as `1h30m`.
pub fn parse(s: &str) -> Result<Dur, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty duration".into());
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("invalid duration {s:?}: expected a number"));
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if rest.starts_with(char::is_whitespace) => {
                return Err(format!(
                    "invalid duration {s:?}: write it without spaces, with a unit of ms, s, m, h or d (10m, 1h30m)"
                ))
            }
            "" => {
                return Err(format!(
                    "invalid duration {s:?}: missing unit (ms, s, m, h or d)"
                ))
            }
            u => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {u:?} (use ms, s, m, h or d)"
                ))
            }
        };
        total = total
            .checked_add(n.saturating_mul(ms))
            .ok_or_else(|| format!("invalid duration {s:?}: too large"))?;
    }
    // Cap at 30 days: nothing in a release train should wait longer.
    if total > 30 * 86_400_000 {
        return Err(format!("duration {s:?} is longer than 30 days"));
    }
    let ms = u64::try_from(total).map_err(|_| format!("invalid duration {s:?}: too large"))?;
    Ok(Dur(Duration::from_millis(ms)))
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        if !ms.is_multiple_of(1000) {
            return write!(f, "{ms}ms");
        }
        let mut s = ms / 1000;
        let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
        s %= 60;
        for (n, u) in [(d, "d"), (h, "h"), (m, "m"), (s, "s")] {
            if n > 0 {
                write!(f, "{n}{u}")?;
            }
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        assert_eq!(parse("90s").map(|d| d.0.as_secs()), Ok(90));
        assert_eq!(parse("10m").map(|d| d.0.as_secs()), Ok(600));
        assert_eq!(parse("1h30m").map(|d| d.0.as_secs()), Ok(5400));
        assert_eq!(parse("250ms").map(|d| d.0.as_millis()), Ok(250));
        assert_eq!(parse("1h30m").map(|d| d.to_string()), Ok("1h30m".into()));
        assert!(parse("10").is_err());
        assert!(parse("10x").is_err());
        assert!(parse("10 minutes").is_err_and(|e| e.contains("without spaces")));
        assert!(parse("").is_err());
        assert!(parse("99999999999999999999999h").is_err());
        assert!(parse("31d").is_err());
    }
}
