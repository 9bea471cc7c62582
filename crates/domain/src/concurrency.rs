//! Concurrency limits: at most `max_concurrency` of one job's tasks, and at most a group's
//! `limit` of the tasks of every job in a concurrency group, hold a slot at once cluster-wide.
//!
//! A task of a limited job is created *waiting*. When it is due, an admission pass gives it a
//! slot if its job and its group both have one free ([`admit`]); from then until the task ends
//! (any terminal state) it holds the slot — across re-polls, retries, a lost node and a lease
//! that ran out — and the state change that ends it frees the slot in its own transaction.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ValidationErrors;

/// The largest limit a job or a group may set.
pub const MAX_LIMIT: u32 = 10_000;

/// A concurrency group's name: 1–64 letters, digits, `.`, `_` and `-`, starting with a letter or
/// digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

/// Why a group name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a concurrency group name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
)]
pub struct InvalidGroupName;

impl FromStr for GroupName {
    type Err = InvalidGroupName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if crate::validation::is_name(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidGroupName)
        }
    }
}

impl GroupName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A concurrency group as a client writes it (`PUT /api/v1/concurrency-groups/{name}`).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInput {
    /// Most tasks of the group's jobs holding a slot at once (1–10000); 1 is mutual exclusion.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    #[serde(deserialize_with = "crate::validation::whole_number")]
    pub limit: u32,
    /// At most 1000 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 1000))]
    pub description: Option<String>,
}

/// A validated concurrency group definition.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub limit: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl TryFrom<GroupInput> for GroupSpec {
    type Error = ValidationErrors;

    fn try_from(input: GroupInput) -> Result<Self, Self::Error> {
        let mut errors = ValidationErrors::new();
        check_limit(&mut errors, "limit", input.limit);
        if input
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 1000)
        {
            errors.push("description", "at most 1000 characters");
        }
        errors.into_result(GroupSpec {
            limit: input.limit,
            description: input.description,
        })
    }
}

/// Records an error on `field` unless `limit` is between 1 and [`MAX_LIMIT`].
pub(crate) fn check_limit(errors: &mut ValidationErrors, field: &str, limit: u32) {
    if !(1..=MAX_LIMIT).contains(&limit) {
        errors.push(field, format!("must be between 1 and {MAX_LIMIT}"));
    }
}

/// A task waiting for a slot, as the admission pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting<T> {
    pub task: T,
    pub job: String,
    /// The job's `max_concurrency`, if it sets one.
    pub job_limit: Option<u32>,
    /// The job's concurrency group, if it names one.
    pub group: Option<String>,
}

/// Slots already held, per job and per group, and each group's limit.
#[derive(Debug, Clone, Default)]
pub struct Holders {
    pub per_job: HashMap<String, u32>,
    pub per_group: HashMap<String, u32>,
    pub group_limits: HashMap<String, u32>,
}

/// Which of `waiting` (in due order) get a slot now: each in turn, if its job and its group both
/// have one free after the ones admitted before it. A task behind one that found no slot may
/// still be admitted when its own job and group have room: a full group never blocks the tasks
/// of another. A group without a limit (deleted while a task waited) admits nothing.
pub fn admit<T: Clone>(waiting: &[Waiting<T>], holders: &Holders) -> Vec<T> {
    let mut per_job = holders.per_job.clone();
    let mut per_group = holders.per_group.clone();
    let mut admitted = Vec::new();
    for w in waiting {
        let job_held = per_job.get(&w.job).copied().unwrap_or(0);
        if w.job_limit.is_some_and(|limit| job_held >= limit) {
            continue;
        }
        if let Some(group) = &w.group {
            let held = per_group.get(group).copied().unwrap_or(0);
            let limit = holders.group_limits.get(group).copied().unwrap_or(0);
            if held >= limit {
                continue;
            }
            per_group.insert(group.clone(), held + 1);
        }
        per_job.insert(w.job.clone(), job_held + 1);
        admitted.push(w.task.clone());
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(task: u32, job: &str, job_limit: Option<u32>, group: Option<&str>) -> Waiting<u32> {
        Waiting {
            task,
            job: job.into(),
            job_limit,
            group: group.map(Into::into),
        }
    }

    fn holders(jobs: &[(&str, u32)], groups: &[(&str, u32, u32)]) -> Holders {
        Holders {
            per_job: jobs.iter().map(|(j, n)| ((*j).into(), *n)).collect(),
            per_group: groups.iter().map(|(g, n, _)| ((*g).into(), *n)).collect(),
            group_limits: groups.iter().map(|(g, _, l)| ((*g).into(), *l)).collect(),
        }
    }

    #[test]
    fn admission_follows_the_limits_of_job_and_group() {
        struct Case {
            name: &'static str,
            waiting: Vec<Waiting<u32>>,
            holders: Holders,
            admitted: Vec<u32>,
        }
        let cases = [
            Case {
                name: "a job limit admits up to its free slots, in due order",
                waiting: (1..=5).map(|t| waiting(t, "a", Some(3), None)).collect(),
                holders: holders(&[("a", 1)], &[]),
                admitted: vec![1, 2],
            },
            Case {
                name: "a full job admits nothing",
                waiting: vec![waiting(1, "a", Some(2), None)],
                holders: holders(&[("a", 2)], &[]),
                admitted: vec![],
            },
            Case {
                name: "a group of limit 1 admits one task of all its jobs",
                waiting: vec![
                    waiting(1, "a", None, Some("g")),
                    waiting(2, "b", None, Some("g")),
                ],
                holders: holders(&[], &[("g", 0, 1)]),
                admitted: vec![1],
            },
            Case {
                name: "a group slot held by another job blocks",
                waiting: vec![waiting(1, "a", None, Some("g"))],
                holders: holders(&[("b", 1)], &[("g", 1, 1)]),
                admitted: vec![],
            },
            Case {
                name: "both limits apply: the tighter one wins",
                waiting: (1..=4)
                    .map(|t| waiting(t, "a", Some(1), Some("g")))
                    .collect(),
                holders: holders(&[], &[("g", 0, 3)]),
                admitted: vec![1],
            },
            Case {
                name: "a full group does not block another group's tasks behind it",
                waiting: vec![
                    waiting(1, "a", None, Some("full")),
                    waiting(2, "b", None, Some("free")),
                    waiting(3, "c", Some(1), None),
                ],
                holders: holders(&[], &[("full", 2, 2), ("free", 0, 1)]),
                admitted: vec![2, 3],
            },
            Case {
                name: "a group with no limit (deleted) admits nothing",
                waiting: vec![waiting(1, "a", None, Some("gone"))],
                holders: holders(&[], &[]),
                admitted: vec![],
            },
            Case {
                name: "a job with no limit left (edited) is admitted at once",
                waiting: (1..=3).map(|t| waiting(t, "a", None, None)).collect(),
                holders: holders(&[("a", 7)], &[]),
                admitted: vec![1, 2, 3],
            },
        ];
        for case in cases {
            assert_eq!(
                admit(&case.waiting, &case.holders),
                case.admitted,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn limits_and_names_are_checked() {
        for (limit, ok) in [(0, false), (1, true), (10_000, true), (10_001, false)] {
            let spec = GroupSpec::try_from(GroupInput {
                limit,
                description: None,
            });
            assert_eq!(spec.is_ok(), ok, "{limit}");
        }
        assert!("registration-client".parse::<GroupName>().is_ok());
        assert!("-x".parse::<GroupName>().is_err());
        assert!("".parse::<GroupName>().is_err());
        assert!("a b".parse::<GroupName>().is_err());
    }
}
