//! Fail-slow detection: a member judges its own disk from how long its durable writes take.
//!
//! Raft's heartbeats see a dead or hung member, not a slow one: a leader whose fsyncs take ten
//! times as long still heartbeats on time, and every write through it waits for its disk. This
//! is the seeds' state-based detection: thresholds on the member's own state, against a baseline
//! it learned while healthy.
//!
//! Time is cut into windows ([`SlowConfig::window_us`]). A window's figure is the median of the
//! write latencies that ended in it (a median, so one stray slow fsync on a busy box flags
//! nothing). A window is *slow* when that median is at least [`SlowConfig::factor`] times the
//! healthy *bar* and above [`SlowConfig::floor_us`] (a fast disk's jitter — 0.1 ms becoming
//! 1 ms — is no failure), or above [`SlowConfig::ceiling_us`] whatever the history (a disk slow
//! from the start has no healthy history to compare with). The bar is the 90th percentile of the
//! last [`SlowConfig::baseline_windows`] healthy windows' figures: the slowest ordinary second,
//! bar the worst tenth. A median would do on a steady load, but under saturating writes with
//! periodic compaction a follower's seconds vary several-fold on their own (its store's commits
//! share the disk), and against the median it was flagged a few times in ten minutes. Slow
//! windows never enter the history, so a long slow spell does not become the new normal.
//!
//! The reported baseline is the healthy median, for people; the bar is what judges.
//!
//! [`SlowConfig::slow_windows`] slow windows in a row flag the disk slow;
//! [`SlowConfig::healthy_windows`] healthy ones in a row clear it. Windows with too few writes
//! to judge ([`SlowConfig::min_samples`]) count as neither: an idle member is not judged. A write
//! still in flight when a window closes counts as a sample of the time it has taken so far, so
//! a disk that takes seconds per fsync is judged by the time it is taking, not only after.

use std::collections::VecDeque;

/// Latencies kept per window for its median; later ones in the same window are not kept.
const SAMPLES_PER_WINDOW_MAX: usize = 1_024;

/// Thresholds of a [`SlowDisk`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowConfig {
    /// The length of a window (microseconds).
    pub window_us: u64,
    /// A window whose median is this many times the baseline is slow (if above `floor_us`).
    pub factor: f64,
    /// A window's median at or below this is never slow by `factor` (microseconds).
    pub floor_us: u64,
    /// A window's median above this is slow whatever the baseline (microseconds).
    pub ceiling_us: u64,
    /// Windows with fewer writes than this are not judged.
    pub min_samples: usize,
    /// Slow windows in a row that flag the disk.
    pub slow_windows: u32,
    /// Healthy windows in a row that clear the flag.
    pub healthy_windows: u32,
    /// Healthy windows' figures kept for the baseline.
    pub baseline_windows: usize,
    /// Healthy windows needed before `factor` judges at all (only `ceiling_us` before).
    pub min_baseline_windows: usize,
    /// The quantile of the healthy windows' figures that `factor` multiplies (the bar).
    pub bar_quantile: f64,
}

impl SlowConfig {
    /// One-second windows; 5× the bar (the healthy 90th percentile) and over 5 ms, or over
    /// 500 ms; flagged after 4 slow windows (a steady disk that became 10× slower is flagged in
    /// 4–5 s), cleared after 10 healthy ones; a history of the last 5 healthy minutes, judged
    /// from 10 windows on. (A 10 ms floor let a 0.8 ms disk turned 10× slower, 8 ms, go
    /// unflagged for 15 s on this box.)
    pub fn default_thresholds() -> SlowConfig {
        SlowConfig {
            window_us: 1_000_000,
            factor: 5.0,
            floor_us: 5_000,
            ceiling_us: 500_000,
            min_samples: 3,
            slow_windows: 4,
            healthy_windows: 10,
            baseline_windows: 300,
            min_baseline_windows: 10,
            bar_quantile: 0.9,
        }
    }
}

/// What a window closing changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowChange {
    /// The disk is now flagged slow.
    BecameSlow,
    /// The flag is cleared.
    Recovered,
}

/// What a [`SlowDisk`] knows, for metrics and `/health`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowReport {
    pub slow: bool,
    /// The last judged window's median latency (microseconds).
    pub recent_us: Option<u64>,
    /// The healthy baseline (microseconds); `None` while it is still being learned.
    pub baseline_us: Option<u64>,
    /// Times the disk was flagged slow.
    pub flags: u64,
}

/// One member's disk, judged by its write latencies.
#[derive(Clone, Debug)]
pub struct SlowDisk {
    cfg: SlowConfig,
    /// Start of the open window; `None` before the first observation.
    window_start: Option<u64>,
    samples: Vec<u64>,
    /// The write in flight, and since when.
    in_flight_since: Option<u64>,
    healthy_figures: VecDeque<u64>,
    slow_run: u32,
    healthy_run: u32,
    report: SlowReport,
}

impl SlowDisk {
    pub fn new(cfg: SlowConfig) -> SlowDisk {
        assert!(cfg.window_us > 0 && cfg.factor >= 1.0 && cfg.slow_windows > 0 && cfg.healthy_windows > 0);
        SlowDisk {
            cfg,
            window_start: None,
            samples: Vec::new(),
            in_flight_since: None,
            healthy_figures: VecDeque::new(),
            slow_run: 0,
            healthy_run: 0,
            report: SlowReport::default(),
        }
    }

    pub fn report(&self) -> SlowReport {
        self.report
    }

    pub fn is_slow(&self) -> bool {
        self.report.slow
    }

    /// A durable write started at `now_us`.
    pub fn write_started(&mut self, now_us: u64) -> Option<SlowChange> {
        let change = self.advance(now_us);
        self.in_flight_since = Some(now_us);
        change
    }

    /// The write in flight became durable at `now_us`.
    pub fn write_finished(&mut self, now_us: u64) -> Option<SlowChange> {
        let change = self.advance(now_us);
        if let Some(since) = self.in_flight_since.take() {
            self.sample(now_us.saturating_sub(since));
        }
        change
    }

    /// Closes the windows that ended by `now_us`; at most one change results (the last).
    pub fn advance(&mut self, now_us: u64) -> Option<SlowChange> {
        let Some(start) = self.window_start else {
            self.window_start = Some(now_us);
            return None;
        };
        if now_us < start + self.cfg.window_us {
            return None;
        }
        let mut change = None;
        let end = start + self.cfg.window_us;
        if let Some(since) = self.in_flight_since {
            // Judged by the time it has taken so far (and again, whole, where it finishes).
            self.sample(end.saturating_sub(since));
        }
        if let Some(c) = self.close_window() {
            change = Some(c);
        }
        // Whole windows that passed since hold nothing (the member did not write, or did not
        // run): they judge nothing. The next window starts at the boundary `now_us` lies in.
        let windows = (now_us - start) / self.cfg.window_us;
        self.window_start = Some(start + windows * self.cfg.window_us);
        change
    }

    fn sample(&mut self, latency_us: u64) {
        if self.samples.len() < SAMPLES_PER_WINDOW_MAX {
            self.samples.push(latency_us);
        }
    }

    fn close_window(&mut self) -> Option<SlowChange> {
        if self.samples.len() < self.cfg.min_samples {
            // Too little to judge, unless what little there is exceeds the ceiling (a disk that
            // takes seconds per write cannot write many in a window).
            if !self.samples.iter().any(|&s| s > self.cfg.ceiling_us) {
                self.samples.clear();
                return None;
            }
        }
        let figure = median(&mut self.samples);
        self.samples.clear();
        self.report.recent_us = Some(figure);
        let bar = self.healthy_quantile(self.cfg.bar_quantile);
        let slow_by_factor =
            bar.is_some_and(|b| figure as f64 >= b as f64 * self.cfg.factor) && figure > self.cfg.floor_us;
        if slow_by_factor || figure > self.cfg.ceiling_us {
            self.slow_run += 1;
            self.healthy_run = 0;
        } else {
            self.healthy_run += 1;
            self.slow_run = 0;
            if self.healthy_figures.len() == self.cfg.baseline_windows {
                self.healthy_figures.pop_front();
            }
            self.healthy_figures.push_back(figure);
            self.report.baseline_us = self.healthy_quantile(0.5);
        }
        if !self.report.slow && self.slow_run >= self.cfg.slow_windows {
            self.report.slow = true;
            self.report.flags += 1;
            return Some(SlowChange::BecameSlow);
        }
        if self.report.slow && self.healthy_run >= self.cfg.healthy_windows {
            self.report.slow = false;
            return Some(SlowChange::Recovered);
        }
        None
    }

    /// The `q` quantile of the healthy windows' figures, once there are enough of them.
    fn healthy_quantile(&self, q: f64) -> Option<u64> {
        if self.healthy_figures.len() < self.cfg.min_baseline_windows.max(1) {
            return None;
        }
        let mut figures: Vec<u64> = self.healthy_figures.iter().copied().collect();
        let at = ((figures.len() as f64 * q) as usize).min(figures.len() - 1);
        Some(*figures.select_nth_unstable(at).1)
    }
}

fn median(values: &mut [u64]) -> u64 {
    debug_assert!(!values.is_empty());
    let mid = values.len() / 2;
    *values.select_nth_unstable(mid).1
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000;
    const SECOND: u64 = 1_000_000;

    /// Writes back to back, each taking `latency`, from `from` for `duration`; returns the time
    /// after and every change seen (with its time).
    fn write_for(disk: &mut SlowDisk, from: u64, duration: u64, latency: u64) -> (u64, Vec<(u64, SlowChange)>) {
        let mut now = from;
        let mut changes = Vec::new();
        while now < from + duration {
            changes.extend(disk.write_started(now).map(|c| (now, c)));
            now += latency;
            changes.extend(disk.write_finished(now).map(|c| (now, c)));
            now += MS;
        }
        (now, changes)
    }

    #[test]
    fn a_disk_that_becomes_ten_times_slower_is_flagged_within_four_seconds_and_cleared_after_it_recovers() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let (now, changes) = write_for(&mut disk, 0, 60 * SECOND, 2 * MS);
        assert!(changes.is_empty(), "a steady disk is never flagged: {changes:?}");
        let report = disk.report();
        assert!(report.baseline_us.is_some_and(|b| (2 * MS..=3 * MS).contains(&b)), "{report:?}");
        let (later, changes) = write_for(&mut disk, now, 20 * SECOND, 20 * MS);
        assert_eq!(changes.len(), 1, "{changes:?}");
        let (at, change) = changes[0];
        assert_eq!(change, SlowChange::BecameSlow);
        assert!(at - now <= 5 * SECOND, "flagged {} ms after it slowed", (at - now) / MS);
        assert!(disk.report().baseline_us.is_some_and(|b| b < 3 * MS), "slow windows stay out of the baseline");
        let (_, changes) = write_for(&mut disk, later, 20 * SECOND, 2 * MS);
        assert_eq!(changes.iter().map(|c| c.1).collect::<Vec<_>>(), vec![SlowChange::Recovered]);
        assert!(changes[0].0 - later <= 12 * SECOND);
        assert_eq!(disk.report().flags, 1);
    }

    #[test]
    fn a_sub_millisecond_disk_turned_ten_times_slower_is_flagged() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let (now, _) = write_for(&mut disk, 0, 30 * SECOND, 800);
        let (_, changes) = write_for(&mut disk, now, 10 * SECOND, 8 * MS);
        let flagged = changes.iter().find(|c| c.1 == SlowChange::BecameSlow).map(|c| (c.0 - now) / MS);
        assert!(flagged.is_some_and(|ms| ms <= 5_000), "0.8 ms to 8 ms flagged after {flagged:?} ms");
    }

    #[test]
    fn seconds_that_are_often_slower_under_load_raise_the_bar() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        // A follower under saturating load: one second in five its store's commit makes the
        // WAL's writes 4× slower.
        let mut now = 0;
        for second in 0..120 {
            let latency = if second % 5 == 0 { 8 * MS } else { 2 * MS };
            now = write_for(&mut disk, now, SECOND, latency).0;
        }
        // Then a longer burst of the same: 4 s at 4× the median is no failure.
        let (now, changes) = write_for(&mut disk, now, 4 * SECOND, 8 * MS);
        assert!(changes.is_empty(), "{changes:?}");
        // A disk that really turned slow is still caught.
        let (_, changes) = write_for(&mut disk, now, 10 * SECOND, 60 * MS);
        assert_eq!(changes.first().map(|c| c.1), Some(SlowChange::BecameSlow));
    }

    #[test]
    fn a_few_slow_writes_among_many_flag_nothing() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let mut now = 0;
        for i in 0..100_000u64 {
            assert_eq!(disk.write_started(now), None);
            // One write in five takes 40× as long (a busy box, a checkpoint's burst).
            now += if i % 5 == 0 { 80 * MS } else { 2 * MS };
            assert_eq!(disk.write_finished(now), None, "at {} s", now / SECOND);
        }
    }

    #[test]
    fn a_fast_disk_getting_slower_but_still_fast_is_not_flagged() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let (now, _) = write_for(&mut disk, 0, 30 * SECOND, 100);
        let (_, changes) = write_for(&mut disk, now, 30 * SECOND, 4 * MS);
        assert!(changes.is_empty(), "0.1 ms to 4 ms is 40× but under the floor: {changes:?}");
    }

    #[test]
    fn a_disk_slow_from_the_start_is_flagged_by_the_ceiling() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let (_, changes) = write_for(&mut disk, 0, 10 * SECOND, 800 * MS);
        assert_eq!(changes.first().map(|c| c.1), Some(SlowChange::BecameSlow), "{changes:?}");
    }

    #[test]
    fn a_write_that_never_finishes_is_judged_by_the_time_it_takes() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let (now, _) = write_for(&mut disk, 0, 30 * SECOND, 2 * MS);
        disk.write_started(now);
        let mut flagged = None;
        for second in 1..=10 {
            if disk.advance(now + second * SECOND) == Some(SlowChange::BecameSlow) {
                flagged = Some(second);
                break;
            }
        }
        assert!(flagged.is_some_and(|s| s <= 5), "flagged after {flagged:?} s");
    }

    #[test]
    fn an_idle_member_is_not_judged() {
        let mut disk = SlowDisk::new(SlowConfig::default_thresholds());
        let (now, _) = write_for(&mut disk, 0, 30 * SECOND, 2 * MS);
        // One write a minute, each slower than the floor: too few to judge any window.
        let mut t = now;
        for _ in 0..20 {
            t += 60 * SECOND;
            assert_eq!(disk.write_started(t), None);
            assert_eq!(disk.write_finished(t + 50 * MS), None);
        }
        assert!(!disk.is_slow());
    }
}
