//! Skip if unchanged: what a downstream may report about its input (its fingerprint), and the
//! outcome a task ends with when its input equalled the last completed run's. The store compares
//! fingerprints in the statement that ends the task, against the job's stored one.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest fingerprint a downstream may report, in characters.
pub const MAX_FINGERPRINT_CHARS: usize = 256;

/// Checks a reported fingerprint: 1 to 256 characters, no control characters. The error is the
/// message for the `fingerprint` field.
pub fn check_fingerprint(fingerprint: &str) -> Result<(), &'static str> {
    let chars = fingerprint.chars().count();
    if chars == 0 || chars > MAX_FINGERPRINT_CHARS || fingerprint.chars().any(char::is_control) {
        return Err("1 to 256 characters, no control characters");
    }
    Ok(())
}

/// How a completed task ended, beyond its state.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The input was the same as the last completed run's: nothing was done (for a run, no
    /// step after the one that found it ran).
    Unchanged,
}

impl TaskOutcome {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for TaskOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskOutcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "unchanged" => Ok(TaskOutcome::Unchanged),
            other => Err(format!(
                "unknown outcome `{other}`; the one outcome is unchanged"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_one_to_256_characters_without_control_characters() {
        for (fingerprint, ok) in [
            ("sha256:9f86d081884c7d65", true),
            ("x", true),
            ("", false),
            ("line\nbreak", false),
        ] {
            assert_eq!(
                check_fingerprint(fingerprint).is_ok(),
                ok,
                "{fingerprint:?}"
            );
        }
        assert!(
            check_fingerprint(&"é".repeat(256)).is_ok(),
            "characters, not bytes"
        );
        assert!(check_fingerprint(&"a".repeat(257)).is_err());
    }

    #[test]
    fn the_outcome_reads_back_from_its_name() {
        assert_eq!("unchanged".parse(), Ok(TaskOutcome::Unchanged));
        assert_eq!(TaskOutcome::Unchanged.to_string(), "unchanged");
        assert!("skipped".parse::<TaskOutcome>().is_err());
    }
}
