//! The duration syntax every setting and tool of the system accepts: `250ms`, `2s`, `5m`, `1h`,
//! `7d`. One parser, so `WORKER_BACKOFF=1s,2s` and `loadgen --duration 30s` read alike.

use std::time::Duration;

/// Parses `250ms`, `2s`, `5m`, `1h`, `7d`. A bare number is rejected: the unit is the point.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| "expected a number with a unit: ms, s, m, h or d (e.g. 2s)".to_owned())?;
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| "expected a number with a unit: ms, s, m, h or d (e.g. 2s)".to_owned())?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    };
    Ok(Duration::from_millis(number.saturating_mul(millis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2s "), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("").is_err());
    }
}
