//! Idle shutdown: an instance nobody has called for `idle_timeout_seconds` is put to
//! sleep (or stopped), so it costs nothing until the next request.

use chrono::{DateTime, Utc};
use corral_core::{Desired, InstanceSettings};

/// The later of the store's activity time and the gateway's in-memory one (Unix ms,
/// 0 when no request came through this server yet).
pub fn last_activity(stored: DateTime<Utc>, route_ms: u64) -> DateTime<Utc> {
    i64::try_from(route_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .and_then(DateTime::from_timestamp_millis)
        .map_or(stored, |seen| seen.max(stored))
}

/// Whether to stop an instance now, and what to ask for instead: `Sleeping` when it
/// wakes on request, else `Stopped`. Never while requests are in flight (a long stream
/// started before the timeout is activity too).
pub fn idle_action(
    settings: &InstanceSettings,
    last_activity: DateTime<Utc>,
    in_flight: u32,
    now: DateTime<Utc>,
) -> Option<Desired> {
    if settings.idle_timeout_seconds == 0 || in_flight > 0 {
        return None;
    }
    let idle = now.signed_duration_since(last_activity);
    (idle.num_milliseconds() >= i64::from(settings.idle_timeout_seconds) * 1000).then_some(
        if settings.wake_on_request {
            Desired::Sleeping
        } else {
            Desired::Stopped
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn settings(idle: u32, wake: bool) -> InstanceSettings {
        InstanceSettings {
            idle_timeout_seconds: idle,
            wake_on_request: wake,
            ..InstanceSettings::default()
        }
    }

    #[test]
    fn sleeps_or_stops_after_the_timeout() {
        let now = Utc::now();
        let long_ago = now - Duration::seconds(61);
        assert_eq!(
            idle_action(&settings(60, true), long_ago, 0, now),
            Some(Desired::Sleeping)
        );
        assert_eq!(
            idle_action(&settings(60, false), long_ago, 0, now),
            Some(Desired::Stopped)
        );
        assert_eq!(
            idle_action(&settings(60, true), now - Duration::seconds(59), 0, now),
            None
        );
        assert_eq!(
            idle_action(&settings(0, true), long_ago, 0, now),
            None,
            "0 disables"
        );
        assert_eq!(
            idle_action(&settings(60, true), long_ago, 1, now),
            None,
            "busy"
        );
    }

    #[test]
    fn the_gateway_time_counts_when_later() {
        let stored = Utc::now() - Duration::seconds(100);
        assert_eq!(last_activity(stored, 0), stored);
        let recent = Utc::now();
        let merged = last_activity(stored, recent.timestamp_millis() as u64);
        assert_eq!(merged.timestamp_millis(), recent.timestamp_millis());
        let older = (stored - Duration::seconds(5)).timestamp_millis() as u64;
        assert_eq!(last_activity(stored, older), stored);
    }
}
