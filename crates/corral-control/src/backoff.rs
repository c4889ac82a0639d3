//! Restart back-off for crashed replicas: a crash loop must not spin a CPU relaunching
//! a model server that dies at once, but the first restart should be quick.

use std::time::Duration;

/// Delay before the next launch after `failures` consecutive failures (1 → `base`,
/// 2 → 2 × `base`, 3 → 4 × `base` ...), never more than `max`.
pub fn restart_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    base.checked_mul(1u32 << doublings)
        .map_or(max, |d| d.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (1..=9)
            .map(|n| restart_delay(n, base, max).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn edge_cases() {
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(restart_delay(0, base, max), base, "no failure yet: base");
        assert_eq!(restart_delay(u32::MAX, base, max), max, "no overflow");
        assert_eq!(
            restart_delay(3, Duration::from_millis(100), Duration::from_secs(1)),
            Duration::from_millis(400)
        );
    }
}
