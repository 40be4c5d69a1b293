//! Faults injected into this process on purpose, for `keel chaos` and the fail-slow tests: only
//! with `--unsafe-fault-injection true`, which production never sets. Without it nothing here
//! is reachable (the HTTP route does not exist and the driver holds no [`InjectedFaults`]).
//!
//! What can only be done from inside the process lives here; everything else (kill -9,
//! SIGSTOP, partitions) `keel chaos` does from outside.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The longest fsync delay that can be injected: a slow disk, not a hung one.
pub const FSYNC_DELAY_MAX: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct InjectedFaults {
    fsync_delay_us: AtomicU64,
    stale_reads: AtomicBool,
}

impl InjectedFaults {
    /// Every WAL write from now on takes `delay` longer (zero: as the disk allows).
    pub fn set_fsync_delay(&self, delay: Duration) {
        let delay = delay.min(FSYNC_DELAY_MAX);
        self.fsync_delay_us.store(delay.as_micros() as u64, Relaxed);
        tracing::warn!(delay_ms = delay.as_millis() as u64, "fault injection: WAL fsync delay set");
    }

    pub fn fsync_delay(&self) -> Duration {
        Duration::from_micros(self.fsync_delay_us.load(Relaxed))
    }

    /// A deliberately unsafe member: linearizable reads are served from its own applied state
    /// without confirming leadership (no ReadIndex), so a member cut off from the others serves
    /// stale data. `keel chaos --unsafe-stale-reads` turns it on to show its checker catches it.
    pub fn set_stale_reads(&self, on: bool) {
        self.stale_reads.store(on, Relaxed);
        tracing::warn!(on, "fault injection: linearizable reads served without ReadIndex");
    }

    pub fn stale_reads(&self) -> bool {
        self.stale_reads.load(Relaxed)
    }

    /// Called by the driver after each WAL write, inside the time it measures as the write's.
    pub fn after_write(&self) {
        let delay = self.fsync_delay();
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
    }
}
