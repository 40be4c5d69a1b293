//! Deliberate bugs that prove the simulator's checks can fail.
//!
//! Each plant is off unless the crate is built with the `planted-bugs` feature *and* the plant is
//! switched on in [`crate::Config::plants`]. Without the feature `Plants::is` is a constant
//! `false`, so the checks compile away.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Plant {
    /// The leader counts replicas of entries from earlier terms toward commit (Raft Figure 8).
    CommitOldTerm = 1 << 0,
    /// A voter grants a second vote in a term it already voted in.
    DoubleVote = 1 << 1,
    /// The host glue sends acknowledgements before the write they acknowledge is durable.
    AckBeforeDurable = 1 << 2,
    /// The leader answers ReadIndex without confirming it is still leader.
    ReadIndexWithoutQuorum = 1 << 3,
    /// The host compacts the log behind a persistent state machine's applied index rather than
    /// its durable one: after a crash the machine needs entries that are gone.
    CompactBeyondDurable = 1 << 4,
    /// The host re-sends a forwarded proposal whose outcome is unknown (its leader stopped
    /// leading before answering): if the old leader had replicated it, it applies twice.
    ReforwardUnknown = 1 << 5,
    /// WAL recovery takes damage anywhere in the last segment for a torn tail and cuts the log
    /// there, silently dropping durable entries after it (entries the member acknowledged).
    TornTailAnywhere = 1 << 6,
    /// The failure detector suspects every leader whenever it is asked. Not a safety bug: it
    /// must cost only churn (pre-votes that fail, counted), never a violation.
    SuspectAlways = 1 << 7,
    /// The fail-slow detector judges every member's disk slow: leaders hand off and everyone is
    /// reluctant to campaign. Not a safety bug either: only churn and slower elections.
    SlowAlways = 1 << 8,
    /// The etcd state machine keeps changes to users, roles and permissions in memory only, not
    /// in the store beside the data: after a restart a member checks requests against an older
    /// auth store than the others, and they diverge.
    AuthApartFromData = 1 << 9,
    /// A write of new entries is treated like one that only moves the commit index: no fsync
    /// before the member acknowledges them, so a crash can take acknowledged entries with it.
    SkipEntrySync = 1 << 10,
}

impl Plant {
    pub const ALL: [Plant; 9] = [
        Plant::CommitOldTerm,
        Plant::DoubleVote,
        Plant::AckBeforeDurable,
        Plant::ReadIndexWithoutQuorum,
        Plant::CompactBeyondDurable,
        Plant::ReforwardUnknown,
        Plant::TornTailAnywhere,
        Plant::AuthApartFromData,
        Plant::SkipEntrySync,
    ];

    /// Plants that must *not* break safety: the simulator shows their runs stay clean.
    pub const HARMLESS: [Plant; 2] = [Plant::SuspectAlways, Plant::SlowAlways];

    pub fn name(self) -> &'static str {
        match self {
            Plant::CommitOldTerm => "commit-old-term",
            Plant::DoubleVote => "double-vote",
            Plant::AckBeforeDurable => "ack-before-durable",
            Plant::ReadIndexWithoutQuorum => "read-index-without-quorum",
            Plant::CompactBeyondDurable => "compact-beyond-durable",
            Plant::ReforwardUnknown => "reforward-unknown",
            Plant::TornTailAnywhere => "torn-tail-anywhere",
            Plant::SuspectAlways => "suspect-always",
            Plant::SlowAlways => "slow-always",
            Plant::AuthApartFromData => "auth-apart-from-data",
            Plant::SkipEntrySync => "skip-entry-sync",
        }
    }

    pub fn from_name(name: &str) -> Option<Plant> {
        Plant::ALL.into_iter().chain(Plant::HARMLESS).find(|plant| plant.name() == name)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plants(u32);

impl Plants {
    pub const NONE: Plants = Plants(0);

    pub fn with(self, plant: Plant) -> Plants {
        Plants(self.0 | plant as u32)
    }

    #[inline]
    pub fn is(self, plant: Plant) -> bool {
        cfg!(feature = "planted-bugs") && self.0 & plant as u32 != 0
    }
}
