//! Exponential backoff with jitter, and the upstream health it is applied to.
//!
//! Backoff is per upstream, not per envelope: when the upstream is unreachable or answering 5xx, every envelope would
//! fail the same way, so the relay sends one probe at a time and waits between probes; the queued envelopes keep their
//! order. The first success opens the gate for every worker again.

use std::time::Duration;

use tokio::time::Instant;

/// How long to wait between attempts while the upstream is failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure. Doubles after each further failure.
    pub initial: Duration,
    /// Cap on the delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before the next attempt after `failures` consecutive failures (1 = the first failure).
    ///
    /// "Equal jitter": half the exponential delay is fixed and half is random, so relays restarted together do not
    /// probe the upstream in lockstep, yet a delay never collapses to zero.
    pub fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let exponent = failures.saturating_sub(1).min(30);
        let base = self.initial.saturating_mul(1u32 << exponent).min(self.max);
        let half = base / 2;
        let jitter_nanos = rng.u64(0..=u64::try_from(half.as_nanos()).unwrap_or(u64::MAX));
        half + Duration::from_nanos(jitter_nanos)
    }
}

/// What the delivery workers know about the upstream: how many attempts failed in a row, and when the next may start.
#[derive(Debug)]
pub struct UpstreamHealth {
    backoff: Backoff,
    rng: fastrand::Rng,
    failures: u32,
    next_attempt: Option<Instant>,
    probing: bool,
}

/// Whether a worker may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Send. When the upstream is failing this worker is the single probe and must report back.
    Open,
    /// Wait until then (or until woken), then ask again.
    WaitUntil(Instant),
    /// Another worker's probe is in flight; wait to be woken by its result.
    WaitForProbe,
}

impl UpstreamHealth {
    pub fn new(backoff: Backoff) -> UpstreamHealth {
        UpstreamHealth {
            backoff,
            rng: fastrand::Rng::new(),
            failures: 0,
            next_attempt: None,
            probing: false,
        }
    }

    /// True after a retryable failure and until the next success.
    pub fn is_down(&self) -> bool {
        self.failures > 0
    }

    /// Asks whether a worker may send now; when the upstream is failing, the first worker to ask after the delay
    /// becomes the probe and the others wait for it.
    pub fn acquire(&mut self, now: Instant) -> Gate {
        if self.failures == 0 {
            return Gate::Open;
        }
        if self.probing {
            return Gate::WaitForProbe;
        }
        match self.next_attempt {
            Some(at) if at > now => Gate::WaitUntil(at),
            _ => {
                self.probing = true;
                Gate::Open
            }
        }
    }

    /// The upstream answered (any status other than 5xx): it is reachable again.
    pub fn on_success(&mut self) {
        self.failures = 0;
        self.next_attempt = None;
        self.probing = false;
    }

    /// A network error, timeout or 5xx. Returns the delay before the next attempt.
    ///
    /// Failures of requests that were already in flight when the upstream went down count once: only a probe's failure
    /// (or the first failure) grows the delay, so ten workers failing together do not push the backoff ten steps.
    pub fn on_failure(&mut self, now: Instant, was_probe: bool) -> Duration {
        if was_probe || self.failures == 0 {
            self.failures = self.failures.saturating_add(1);
            let delay = self.backoff.delay(self.failures, &mut self.rng);
            self.next_attempt = Some(now + delay);
        }
        if was_probe {
            self.probing = false;
        }
        self.next_attempt
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// How long one envelope waits before its next attempt after `attempts` failed ones. Separate from the upstream's
    /// gate: an envelope the upstream keeps failing on backs off on its own while the others flow.
    pub fn envelope_delay(&mut self, attempts: u32) -> Duration {
        self.backoff.delay(attempts, &mut self.rng)
    }

    /// A probe that ended without an answer about the upstream (nothing was sent): let another worker probe.
    pub fn release_probe(&mut self) {
        self.probing = false;
    }

    /// Seconds an SDK should wait before retrying when the relay is full: the time to the next attempt, at least 1.
    pub fn retry_after_secs(&self, now: Instant) -> u64 {
        let wait = self
            .next_attempt
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_exponentially_within_jitter_bounds() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut rng = fastrand::Rng::with_seed(7);
        for (failures, base_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1600), (6, 2000), (40, 2000)] {
            for _ in 0..50 {
                let delay = backoff.delay(failures, &mut rng);
                let base = Duration::from_millis(base_ms);
                assert!(
                    delay >= base / 2 && delay <= base,
                    "failure {failures}: {delay:?} outside [{:?}, {base:?}]",
                    base / 2
                );
            }
        }
    }

    #[test]
    fn jitter_varies() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(1),
        };
        let mut rng = fastrand::Rng::with_seed(1);
        let delays: std::collections::HashSet<Duration> = (0..20).map(|_| backoff.delay(1, &mut rng)).collect();
        assert!(delays.len() > 1, "jitter spreads the delays");
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_at_a_time_after_the_backoff() {
        let backoff = Backoff {
            initial: Duration::from_secs(4),
            max: Duration::from_secs(60),
        };
        let mut health = UpstreamHealth::new(backoff);
        assert_eq!(
            health.acquire(Instant::now()),
            Gate::Open,
            "healthy: every worker may send"
        );
        assert_eq!(health.acquire(Instant::now()), Gate::Open);

        let start = Instant::now();
        let delay = health.on_failure(start, false);
        assert!(health.is_down());
        assert!(
            delay >= Duration::from_secs(2) && delay <= Duration::from_secs(4),
            "{delay:?}"
        );
        // A second in-flight request failing at the same time does not grow the delay.
        assert_eq!(health.on_failure(start, false), delay);

        let Gate::WaitUntil(at) = health.acquire(Instant::now()) else {
            panic!("must wait after a failure")
        };
        tokio::time::sleep_until(at).await;
        let waited = Instant::now() - start;
        assert!(
            waited >= delay && waited <= delay + Duration::from_millis(1),
            "woken at the gate: {waited:?}"
        );
        assert_eq!(
            health.acquire(Instant::now()),
            Gate::Open,
            "the first worker becomes the probe"
        );
        assert_eq!(
            health.acquire(Instant::now()),
            Gate::WaitForProbe,
            "the others wait for it"
        );

        let second = health.on_failure(Instant::now(), true);
        assert!(
            second >= Duration::from_secs(4) && second <= Duration::from_secs(8),
            "doubled: {second:?}"
        );
        let Gate::WaitUntil(at) = health.acquire(Instant::now()) else {
            panic!("must wait again")
        };
        tokio::time::sleep_until(at).await;
        assert_eq!(health.acquire(Instant::now()), Gate::Open);
        health.on_success();
        assert!(!health.is_down());
        assert_eq!(
            health.acquire(Instant::now()),
            Gate::Open,
            "after a success every worker sends again"
        );
        assert_eq!(health.acquire(Instant::now()), Gate::Open);
    }
}
