//! Human-readable durations in config files: `"75s"`, `"1500ms"`, `"2m"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A duration written as a number and a unit (`ms`, `s`, `m`, `h`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ConfigDuration(pub Duration);

// === impl ConfigDuration ===

impl ConfigDuration {
    pub const fn from_millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// Parses `"<number><unit>"`; the number may have a fractional part (`"1.5s"`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "{s:?} is not a duration (expected a number and a unit, e.g. \"500ms\", \"75s\", \"2m\", \"1h\")"
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration: {num:?} is not a number"))?;
        let millis_per_unit = match unit.trim() {
            "ms" => 1.0,
            "s" => 1_000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            "" => {
                return Err(format!(
                    "{s:?} is not a duration: the unit is missing (one of ms, s, m, h)"
                ))
            }
            other => {
                return Err(format!(
                    "{s:?} is not a duration: unknown unit {other:?} (expected ms, s, m or h)"
                ))
            }
        };
        let millis = value * millis_per_unit;
        if !millis.is_finite() || millis > 1e12 {
            return Err(format!("{s:?} is too long a duration"));
        }
        Ok(Self(
            Duration::from_micros((millis * 1000.0).round() as u64),
        ))
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            write!(f, "0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl fmt::Debug for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for ConfigDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"75s\", \"2m\" or \"1h\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ConfigDuration::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_fractions() {
        assert_eq!(
            ConfigDuration::parse("500ms").unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!(
            ConfigDuration::parse("75s").unwrap().0,
            Duration::from_secs(75)
        );
        assert_eq!(
            ConfigDuration::parse("1.5s").unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!(
            ConfigDuration::parse("2m").unwrap().0,
            Duration::from_secs(120)
        );
        assert_eq!(
            ConfigDuration::parse("1h").unwrap().0,
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(ConfigDuration::parse("75")
            .unwrap_err()
            .contains("unit is missing"));
        assert!(ConfigDuration::parse("3d")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(ConfigDuration::parse("s")
            .unwrap_err()
            .contains("not a duration"));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(ConfigDuration::from_millis(1500).to_string(), "1500ms");
        assert_eq!(ConfigDuration::from_secs(120).to_string(), "2m");
        assert_eq!(ConfigDuration::from_secs(75).to_string(), "75s");
    }
}
