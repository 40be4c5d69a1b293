//! Phi-accrual suspicion over heartbeat inter-arrival times.
//!
//! φ(t) = −log10 P(the next heartbeat comes later than t after the last sign of life), with the
//! intervals modelled as a normal distribution fitted to the recent ones (Akka's logistic
//! approximation of its tail). φ = 1 means a 10 % chance that a heartbeat is still on its way,
//! φ = 8 one in a hundred million. A host picks thresholds; [`PhiAccrual::deadline`] says when
//! the silence will reach one, so it can wake exactly then instead of polling.
//!
//! What counts as a sample: only the intervals between *periodic* heartbeats at least half the
//! expected interval apart. Extra heartbeats (a leader's ReadIndex rounds) and appends still
//! prove the peer alive (they reset the silence) but would otherwise teach the detector that
//! the peer speaks every few milliseconds, and the next ordinary pause would look like a death.
//! Each sample is capped at [`SAMPLE_CAP_INTERVALS`] expected intervals: a pause of the
//! *watcher's own* process (SIGSTOP, a stall) otherwise widens the distribution for a long
//! time after.

use std::collections::VecDeque;

/// A sample is at most this many expected intervals long.
pub const SAMPLE_CAP_INTERVALS: u64 = 4;
/// Fewer samples than this and the distribution is assumed: the expected interval, with a
/// quarter of it as standard deviation (Akka's first-heartbeat estimate).
pub const MIN_SAMPLES: usize = 4;

/// What a detector assumes and keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhiConfig {
    /// The interval the watched peer means to keep between heartbeats (microseconds).
    pub expected_interval_us: u64,
    /// The least standard deviation assumed (microseconds): a perfectly regular sender would
    /// otherwise be suspected a hair after its usual time.
    pub min_std_us: u64,
    /// Samples kept (the most recent).
    pub window: usize,
}

impl PhiConfig {
    /// For heartbeats every `expected_interval_us`: a window of 200 samples and a floor on the
    /// standard deviation of half the interval (φ 8 is then reached no sooner than about 3.8
    /// intervals after the last heartbeat: a fifth of the interval suspected healthy leaders of a
    /// busy 2-core box dozens of times in ten minutes).
    pub fn for_interval(expected_interval_us: u64) -> PhiConfig {
        let expected_interval_us = expected_interval_us.max(1);
        PhiConfig { expected_interval_us, min_std_us: (expected_interval_us / 2).max(1), window: 200 }
    }
}

/// One watched peer.
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    cfg: PhiConfig,
    samples: VecDeque<u64>,
    sum: u128,
    sum_squares: u128,
    /// The last periodic heartbeat taken as the start of a sample.
    sampled_at: Option<u64>,
    /// The last sign of life of any kind.
    heard_at: Option<u64>,
}

impl PhiAccrual {
    pub fn new(cfg: PhiConfig) -> PhiAccrual {
        let window = cfg.window.max(MIN_SAMPLES);
        PhiAccrual {
            cfg: PhiConfig { window, ..cfg },
            samples: VecDeque::with_capacity(window),
            sum: 0,
            sum_squares: 0,
            sampled_at: None,
            heard_at: None,
        }
    }

    /// A sign of life at `now`; `periodic` for a heartbeat the peer sends on its schedule.
    /// Times that go backwards are taken as `now` = the latest seen.
    pub fn heard(&mut self, now: u64, periodic: bool) {
        let now = now.max(self.heard_at.unwrap_or(0));
        self.heard_at = Some(now);
        if !periodic {
            return;
        }
        let Some(previous) = self.sampled_at else {
            self.sampled_at = Some(now);
            return;
        };
        let interval = now - previous;
        if interval < self.cfg.expected_interval_us / 2 {
            return;
        }
        self.sampled_at = Some(now);
        let sample = interval.min(SAMPLE_CAP_INTERVALS * self.cfg.expected_interval_us);
        if self.samples.len() == self.cfg.window {
            let old = self.samples.pop_front().expect("window is full");
            self.sum -= u128::from(old);
            self.sum_squares -= u128::from(old) * u128::from(old);
        }
        self.samples.push_back(sample);
        self.sum += u128::from(sample);
        self.sum_squares += u128::from(sample) * u128::from(sample);
    }

    /// The watcher itself did not run for `us` (its process was starved or stopped): it could
    /// not have heard anything meanwhile, so that time is not the peer's silence. Moves the last
    /// sign of life (and the start of the next sample) forward by it.
    pub fn excuse(&mut self, us: u64) {
        self.heard_at = self.heard_at.map(|at| at.saturating_add(us));
        self.sampled_at = self.sampled_at.map(|at| at.saturating_add(us));
    }

    /// When the peer was last heard from, if ever.
    pub fn heard_at(&self) -> Option<u64> {
        self.heard_at
    }

    /// Samples held.
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// Mean and standard deviation (floored) of the intervals, in microseconds.
    pub fn distribution(&self) -> (f64, f64) {
        let floor = self.cfg.min_std_us as f64;
        if self.samples.len() < MIN_SAMPLES {
            let mean = self.cfg.expected_interval_us as f64;
            return (mean, (mean / 4.0).max(floor));
        }
        let n = self.samples.len() as f64;
        let mean = self.sum as f64 / n;
        let variance = (self.sum_squares as f64 / n - mean * mean).max(0.0);
        (mean, variance.sqrt().max(floor))
    }

    /// φ of the silence from the last sign of life to `now` (0 before anything was heard).
    pub fn phi(&self, now: u64) -> f64 {
        let Some(heard_at) = self.heard_at else { return 0.0 };
        let (mean, std) = self.distribution();
        let elapsed = now.saturating_sub(heard_at) as f64;
        phi_of((elapsed - mean) / std)
    }

    /// When φ reaches `threshold` unless the peer is heard from first; `None` before anything
    /// was heard.
    pub fn deadline(&self, threshold: f64) -> Option<u64> {
        let heard_at = self.heard_at?;
        let (mean, std) = self.distribution();
        let elapsed = (mean + deviations_for(threshold) * std).max(0.0);
        Some(heard_at.saturating_add(elapsed.ceil() as u64))
    }
}

/// φ of a silence `y` standard deviations past the mean (Akka's logistic approximation of the
/// normal tail). Increasing in `y`; finite for every finite `y`.
pub fn phi_of(y: f64) -> f64 {
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    // P(a later arrival), computed on the side that keeps precision.
    let later = if y > 0.0 { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
    if later <= 0.0 {
        // Past f64's range: as suspicious as it gets.
        return f64::MAX;
    }
    -later.log10()
}

/// The `y` at which [`phi_of`] reaches `threshold` (bisection; φ is increasing in `y`).
pub fn deviations_for(threshold: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0f64, 40.0f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if phi_of(mid) < threshold {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: u64 = 1000;

    fn regular(every: u64, beats: u64) -> PhiAccrual {
        let mut d = PhiAccrual::new(PhiConfig::for_interval(100 * MS));
        for i in 0..beats {
            d.heard(i * every, true);
        }
        d
    }

    #[test]
    fn silence_grows_suspicion_and_a_heartbeat_ends_it() {
        let d = regular(100 * MS, 50);
        let last = 49 * 100 * MS;
        assert!(d.phi(last + 50 * MS) < 0.5, "half an interval is nothing");
        assert!(d.phi(last + 100 * MS) < 1.0);
        let at_5 = d.phi(last + 500 * MS);
        assert!(at_5 > 8.0, "five intervals of silence after a regular beat: phi {at_5}");
        let mut d = d;
        d.heard(last + 500 * MS, true);
        assert!(d.phi(last + 500 * MS) < 0.5);
    }

    #[test]
    fn a_jittery_peer_is_given_longer() {
        let steady = regular(100 * MS, 60);
        let mut jittery = PhiAccrual::new(PhiConfig::for_interval(100 * MS));
        let mut at = 0;
        for i in 0..60u64 {
            at += if i % 2 == 0 { 60 * MS } else { 240 * MS };
            jittery.heard(at, true);
        }
        let (steady_at, jittery_at) = (steady.deadline(8.0).unwrap(), jittery.deadline(8.0).unwrap());
        let steady_wait = steady_at - steady.heard_at().unwrap();
        let jittery_wait = jittery_at - jittery.heard_at().unwrap();
        assert!(jittery_wait > steady_wait + 100 * MS, "{jittery_wait} vs {steady_wait}");
    }

    #[test]
    fn extra_heartbeats_prove_life_but_do_not_shrink_the_interval() {
        // ReadIndex rounds add heartbeats every few ms between the periodic ones.
        let mut d = PhiAccrual::new(PhiConfig::for_interval(100 * MS));
        for i in 0..50u64 {
            for extra in 0..10 {
                d.heard(i * 100 * MS + extra * 5 * MS, true);
            }
        }
        let (mean, _) = d.distribution();
        assert!((mean - 100_000.0).abs() < 10_000.0, "mean {mean}");
        let last = 49 * 100 * MS + 45 * MS;
        assert!(d.phi(last + 100 * MS) < 3.0, "an ordinary pause after the reads stop");
    }

    #[test]
    fn the_deadline_is_where_phi_crosses_the_threshold() {
        let d = regular(100 * MS, 30);
        for threshold in [1.0, 3.0, 8.0, 12.0] {
            let at = d.deadline(threshold).unwrap();
            assert!(d.phi(at) >= threshold - 1e-6, "at {threshold}");
            assert!(d.phi(at - 2) < threshold, "just before {threshold}");
        }
        assert_eq!(PhiAccrual::new(PhiConfig::for_interval(1000)).deadline(8.0), None);
    }

    #[test]
    fn a_pause_of_the_watcher_is_not_the_peers_silence() {
        let mut d = regular(100 * MS, 50);
        let last = 49 * 100 * MS;
        d.excuse(5_000 * MS);
        assert!(d.phi(last + 5_000 * MS + 100 * MS) < 1.0, "five seconds stopped, then one interval");
        d.heard(last + 5_000 * MS + 100 * MS, true);
        let (mean, _) = d.distribution();
        assert!((mean - 100_000.0).abs() < 1_000.0, "the pause is no sample: mean {mean}");
    }

    #[test]
    fn the_watchers_own_pause_does_not_widen_the_distribution_for_long() {
        let mut d = regular(100 * MS, 100);
        let (_, std_before) = d.distribution();
        d.heard(99 * 100 * MS + 60_000 * MS, true); // a minute-long stop of the watcher
        let (_, std_after) = d.distribution();
        assert!(std_after < std_before * 4.0 + 50_000.0, "{std_before} -> {std_after}");
    }

    proptest! {
        /// Whatever arrives, φ stays a number that never falls while the silence lasts, and the
        /// sums behind the distribution never drift from the samples.
        #[test]
        fn phi_is_finite_and_grows_with_silence(gaps in prop::collection::vec((0u64..1_000_000, any::<bool>()), 0..300), probe in 0u64..10_000_000) {
            let mut d = PhiAccrual::new(PhiConfig { window: 16, ..PhiConfig::for_interval(100 * MS) });
            let mut now = 0;
            for (gap, periodic) in gaps {
                now += gap;
                d.heard(now, periodic);
            }
            let (a, b) = (d.phi(now + probe), d.phi(now + probe + 1000));
            prop_assert!(a.is_finite() || a == f64::MAX);
            prop_assert!(b >= a);
            let sum: u128 = d.samples.iter().map(|&s| u128::from(s)).sum();
            prop_assert_eq!(sum, d.sum);
            prop_assert!(d.samples.len() <= 16);
        }
    }
}
