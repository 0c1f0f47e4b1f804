//! The bug zoo: known bugs of replicated ledgers, re-introduced one at a time so the safety
//! suites can prove they catch each of them (issue 3, research reliability-anchors.md).
//!
//! Without the `bug-zoo` cargo feature [`active`] is a constant `false` and every seeded branch
//! compiles away: release and test builds carry none of them. With the feature, the process
//! picks at most one bug, from `DEDUP_BUG_ZOO=<name>` at start ([`select_from_env`]) or from a
//! simulation ([`select`]); with none picked the code behaves exactly as without the feature.

use std::fmt;
use std::str::FromStr;

/// One seeded bug, and the suite expected to catch it (`docs/safety.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Bug {
    /// The Raft log reports an append durable before it is flushed (rule 4).
    AckBeforeFlush = 1,
    /// Complete accepts a token older than the record's current one (rule 3).
    StaleTokenComplete = 2,
    /// Apply judges leases and retention by the replica's own wall clock instead of the entry's
    /// ledger time (rules 1 and 5).
    LocalClockApply = 3,
    /// After a restart the state machine reports an older applied index, so entries it already
    /// applied are applied a second time (rules 2 and 5).
    ApplyTwiceOnReplay = 4,
    /// Purge treats a record as expired one default retention (24 h) before its deadline
    /// (rule 3: a completed outcome is lost inside its retention).
    EarlyPurge = 5,
}

impl Bug {
    pub const ALL: [Bug; 5] =
        [Bug::AckBeforeFlush, Bug::StaleTokenComplete, Bug::LocalClockApply, Bug::ApplyTwiceOnReplay, Bug::EarlyPurge];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFlush => "ack-before-flush",
            Bug::StaleTokenComplete => "stale-token-complete",
            Bug::LocalClockApply => "local-clock-apply",
            Bug::ApplyTwiceOnReplay => "apply-twice-on-replay",
            Bug::EarlyPurge => "early-purge",
        }
    }
}

impl fmt::Display for Bug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Bug {
    type Err = String;

    fn from_str(name: &str) -> Result<Bug, String> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name).ok_or_else(|| {
            let names: Vec<&str> = Bug::ALL.iter().map(|bug| bug.name()).collect();
            format!("unknown bug {name:?}; the zoo holds {}", names.join(", "))
        })
    }
}

/// The environment variable that picks a bug in a `bug-zoo` build.
pub const BUG_ZOO_ENV: &str = "DEDUP_BUG_ZOO";

#[cfg(feature = "bug-zoo")]
mod selected {
    use std::sync::atomic::AtomicU8;
    use std::sync::atomic::Ordering;

    use super::Bug;

    static SELECTED: AtomicU8 = AtomicU8::new(0);

    pub fn select(bug: Option<Bug>) {
        SELECTED.store(bug.map_or(0, |bug| bug as u8), Ordering::SeqCst);
    }

    pub fn active(bug: Bug) -> bool {
        SELECTED.load(Ordering::Relaxed) == bug as u8
    }
}

/// Whether `bug` is seeded in this process. Always `false` without the `bug-zoo` feature.
#[cfg(feature = "bug-zoo")]
pub fn active(bug: Bug) -> bool {
    selected::active(bug)
}

/// Whether `bug` is seeded in this process. Always `false` without the `bug-zoo` feature.
#[cfg(not(feature = "bug-zoo"))]
#[inline(always)]
pub const fn active(_bug: Bug) -> bool {
    false
}

/// Seeds `bug` (or none) in this process.
#[cfg(feature = "bug-zoo")]
pub fn select(bug: Option<Bug>) {
    selected::select(bug);
    if let Some(bug) = bug {
        tracing::warn!(%bug, "BUG ZOO: this process runs with a deliberately seeded bug");
    }
}

/// Reads `DEDUP_BUG_ZOO` and seeds the bug it names. Without the feature a set variable is an
/// error, so a zoo run can never silently test a correct binary.
pub fn select_from_env() -> Result<Option<Bug>, String> {
    let Ok(name) = std::env::var(BUG_ZOO_ENV) else {
        return Ok(None);
    };
    if name.is_empty() {
        return Ok(None);
    }
    let bug: Bug = name.parse()?;
    #[cfg(feature = "bug-zoo")]
    {
        select(Some(bug));
        Ok(Some(bug))
    }
    #[cfg(not(feature = "bug-zoo"))]
    {
        Err(format!("{BUG_ZOO_ENV}={bug} needs a build with the bug-zoo feature"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for bug in Bug::ALL {
            assert_eq!(bug.name().parse::<Bug>(), Ok(bug));
        }
        assert!("no-such-bug".parse::<Bug>().unwrap_err().contains("early-purge"));
    }

    #[cfg(not(feature = "bug-zoo"))]
    #[test]
    fn without_the_feature_no_bug_is_active() {
        for bug in Bug::ALL {
            assert!(!active(bug));
        }
    }
}
