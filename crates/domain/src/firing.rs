//! Turning due occurrences into outcomes: the misfire policy decides which late occurrences still
//! get a task, and the overlap policy decides what a new task does while another of its job is
//! open. Every occurrence gets exactly one outcome: a task, or a recorded skip.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Span;

/// What to do with occurrences found later than the grace window.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MisfirePolicy {
    /// Record each late occurrence as skipped.
    Skip,
    /// One task, for the latest late occurrence; the others are recorded as coalesced.
    #[default]
    FireOnce,
    /// One task per late occurrence, the latest `catch_up_limit` of them; older ones are skipped.
    CatchUp,
}

/// A trigger's misfire settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MisfireRule {
    pub policy: MisfirePolicy,
    /// An occurrence at most this late is on time.
    pub grace: Span,
    /// Most tasks `catch_up` creates for missed occurrences.
    pub catch_up_limit: u32,
}

/// Why an occurrence got no task.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Late, under the `skip` misfire policy.
    Misfire,
    /// Late, folded into a later occurrence's task under `fire_once`.
    Coalesced,
    /// Late, beyond the `catch_up` limit.
    CatchUpLimit,
    /// In a period one of the trigger's exclusion calendars excludes.
    Calendar,
    /// A task of the job was open, under the `skip` overlap policy.
    Overlap,
    /// A task of the job was open and one was already waiting, under `buffer_one`.
    BufferFull,
}

impl SkipReason {
    /// Every reason, in the order the documentation lists them.
    pub const ALL: [SkipReason; 6] = [
        SkipReason::Misfire,
        SkipReason::Coalesced,
        SkipReason::CatchUpLimit,
        SkipReason::Calendar,
        SkipReason::Overlap,
        SkipReason::BufferFull,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Misfire => "misfire",
            SkipReason::Coalesced => "coalesced",
            SkipReason::CatchUpLimit => "catch_up_limit",
            SkipReason::Calendar => "calendar",
            SkipReason::Overlap => "overlap",
            SkipReason::BufferFull => "buffer_full",
        }
    }
}

/// A name that is not a skip reason; says which are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a skip reason (one of {names})", names = SkipReason::ALL.map(SkipReason::as_str).join(", "))]
pub struct UnknownSkipReason(pub String);

impl std::str::FromStr for SkipReason {
    type Err = UnknownSkipReason;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        SkipReason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| UnknownSkipReason(name.to_owned()))
    }
}

/// Most occurrences looked at in one pass over one trigger; the rest wait for the next pass.
pub const MAX_OCCURRENCES_PER_PASS: usize = 1000;

/// The outcome of one pass over one due trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Occurrences that get a task (before the overlap policy), oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Occurrences recorded as skipped, with why.
    pub skip: Vec<(DateTime<Utc>, SkipReason)>,
    /// Occurrences an exclusion calendar excludes, with the calendar's name: recorded as skipped
    /// with reason [`SkipReason::Calendar`].
    pub excluded: Vec<(DateTime<Utc>, String)>,
    /// The trigger's next fire time; `None` when it will never fire again.
    pub next_fire_at: Option<DateTime<Utc>>,
}

/// Plans the occurrences of a trigger due at `now`, starting with `first` (its stored next fire
/// time, at most `now`). `next` gives the occurrence after a given one, `None` past the end.
pub fn plan(
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    rule: MisfireRule,
    next: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
) -> Plan {
    plan_ahead(first, now, now, rule, next)
}

/// Like [`plan`], but also fires the occurrences due up to `horizon` (at least `now`): fired
/// ahead, they are on time. Whether an occurrence is late is judged against `now` alone.
pub fn plan_ahead(
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
    rule: MisfireRule,
    next: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
) -> Plan {
    plan_excluding(first, now, horizon, rule, next, |_| None)
}

/// Like [`plan_ahead`], but an occurrence `excluded` names a calendar for is set apart first:
/// it is neither fired nor counted as late, so under `fire_once` the latest late occurrence
/// that is *not* excluded is the one that fires.
pub fn plan_excluding(
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
    rule: MisfireRule,
    next: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
    excluded: impl Fn(DateTime<Utc>) -> Option<String>,
) -> Plan {
    let mut due = Vec::new();
    let mut cursor = Some(first);
    while let Some(at) = cursor.filter(|at| *at <= horizon && due.len() < MAX_OCCURRENCES_PER_PASS)
    {
        due.push(at);
        cursor = next(at);
    }
    let grace =
        chrono::Duration::from_std(rule.grace.as_duration()).unwrap_or(chrono::Duration::MAX);
    let is_late = |at: DateTime<Utc>| now - at > grace;
    // More late occurrences remain than one pass takes: every late one here is followed by a
    // later late one, so a policy that keeps only the latest keeps none of these.
    let more = cursor.is_some_and(is_late);
    let mut set_apart = Vec::new();
    due.retain(|at| match excluded(*at) {
        Some(calendar) => {
            set_apart.push((*at, calendar));
            false
        }
        None => true,
    });
    let (late, on_time): (Vec<_>, Vec<_>) = due.into_iter().partition(|at| is_late(*at));

    let mut fire = Vec::new();
    let mut skip = Vec::new();
    match rule.policy {
        MisfirePolicy::Skip => skip.extend(late.iter().map(|at| (*at, SkipReason::Misfire))),
        MisfirePolicy::FireOnce => {
            let keep = if more { 0 } else { late.len().min(1) };
            let (older, latest) = late.split_at(late.len() - keep);
            skip.extend(older.iter().map(|at| (*at, SkipReason::Coalesced)));
            fire.extend_from_slice(latest);
        }
        MisfirePolicy::CatchUp => {
            let limit = usize::try_from(rule.catch_up_limit).unwrap_or(usize::MAX);
            let keep = if more { 0 } else { late.len().min(limit) };
            let (older, latest) = late.split_at(late.len() - keep);
            skip.extend(older.iter().map(|at| (*at, SkipReason::CatchUpLimit)));
            fire.extend_from_slice(latest);
        }
    }
    fire.extend(on_time);
    Plan {
        fire,
        skip,
        excluded: set_apart,
        next_fire_at: cursor,
    }
}

/// What a job does with a new task while another of its tasks is open.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverlapPolicy {
    /// Run side by side.
    #[default]
    Allow,
    /// One at a time: the new one is skipped (and recorded).
    Skip,
    /// Queue at most one: it starts when the open one finishes; a further one is skipped.
    BufferOne,
    /// Cancel the open task and start the new one.
    Replace,
}

/// What happens to one new task under the overlap policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Create it, due as usual.
    Start,
    /// Create it waiting for the open task to finish.
    Wait,
    /// Cancel the open tasks, then create it.
    Replace,
    /// Do not create it; record the skip.
    Refuse(SkipReason),
}

/// The job's open work when a new task arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenWork {
    /// A task of the job is pending or processing (not counting one waiting under `buffer_one`).
    pub running: bool,
    /// A task is waiting under `buffer_one`.
    pub waiting: bool,
}

impl OverlapPolicy {
    /// Decides what a new task does given the job's open work.
    pub fn admit(self, open: OpenWork) -> Admission {
        match (self, open.running, open.waiting) {
            (OverlapPolicy::Allow, ..) | (_, false, false) => Admission::Start,
            (OverlapPolicy::Skip, ..) => Admission::Refuse(SkipReason::Overlap),
            (OverlapPolicy::BufferOne, _, true) => Admission::Refuse(SkipReason::BufferFull),
            (OverlapPolicy::BufferOne, true, false) => Admission::Wait,
            (OverlapPolicy::Replace, ..) => Admission::Replace,
        }
    }

    /// The open work after a task was admitted with `admission`.
    pub fn after(self, open: OpenWork, admission: Admission) -> OpenWork {
        match admission {
            Admission::Start => OpenWork {
                running: true,
                waiting: open.waiting,
            },
            // Replacing cancels every open task, the waiting one included.
            Admission::Replace => OpenWork {
                running: true,
                waiting: false,
            },
            Admission::Wait => OpenWork {
                running: open.running,
                waiting: true,
            },
            Admission::Refuse(_) => open,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + second, 0)
            .single()
            .expect("instant")
    }

    #[test]
    fn every_skip_reason_reads_back_from_its_wire_name_and_others_are_refused_naming_them() {
        for reason in SkipReason::ALL {
            assert_eq!(reason.as_str().parse::<SkipReason>(), Ok(reason));
            assert_eq!(
                serde_json::to_value(reason).expect("json"),
                serde_json::json!(reason.as_str())
            );
        }
        let refused = "paused".parse::<SkipReason>().expect_err("not a reason");
        assert_eq!(
            refused.to_string(),
            "`paused` is not a skip reason (one of misfire, coalesced, catch_up_limit, calendar, overlap, buffer_full)"
        );
    }

    /// Every 10 seconds from second 0, up to second 1000.
    fn every_ten(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let next = t + chrono::Duration::seconds(10);
        (next <= at(1000)).then_some(next)
    }

    fn rule(policy: MisfirePolicy) -> MisfireRule {
        MisfireRule {
            policy,
            grace: Span::from_secs(15),
            catch_up_limit: 2,
        }
    }

    #[test]
    fn on_time_occurrences_fire_under_every_policy() {
        for policy in [
            MisfirePolicy::Skip,
            MisfirePolicy::FireOnce,
            MisfirePolicy::CatchUp,
        ] {
            let plan = plan(at(0), at(12), rule(policy), every_ten);
            assert_eq!(plan.fire, [at(0), at(10)], "{policy:?}");
            assert!(plan.skip.is_empty());
            assert_eq!(plan.next_fire_at, Some(at(20)));
        }
    }

    #[test]
    fn skip_records_every_late_occurrence_and_fires_the_on_time_ones() {
        let plan = plan(at(0), at(45), rule(MisfirePolicy::Skip), every_ten);
        assert_eq!(
            plan.skip,
            [
                (at(0), SkipReason::Misfire),
                (at(10), SkipReason::Misfire),
                (at(20), SkipReason::Misfire)
            ]
        );
        assert_eq!(plan.fire, [at(30), at(40)]);
        assert_eq!(plan.next_fire_at, Some(at(50)));
    }

    #[test]
    fn fire_once_fires_the_latest_late_occurrence_and_coalesces_the_rest() {
        let plan = plan(at(0), at(45), rule(MisfirePolicy::FireOnce), every_ten);
        assert_eq!(
            plan.skip,
            [
                (at(0), SkipReason::Coalesced),
                (at(10), SkipReason::Coalesced)
            ]
        );
        assert_eq!(plan.fire, [at(20), at(30), at(40)]);
    }

    #[test]
    fn catch_up_fires_the_latest_missed_up_to_its_limit() {
        let plan = plan(at(0), at(65), rule(MisfirePolicy::CatchUp), every_ten);
        assert_eq!(
            plan.skip,
            [
                (at(0), SkipReason::CatchUpLimit),
                (at(10), SkipReason::CatchUpLimit),
                (at(20), SkipReason::CatchUpLimit)
            ]
        );
        assert_eq!(plan.fire, [at(30), at(40), at(50), at(60)]);
    }

    #[test]
    fn every_due_occurrence_gets_exactly_one_outcome() {
        for policy in [
            MisfirePolicy::Skip,
            MisfirePolicy::FireOnce,
            MisfirePolicy::CatchUp,
        ] {
            let plan = plan(at(0), at(995), rule(policy), every_ten);
            let mut outcomes: Vec<_> = plan.fire.clone();
            outcomes.extend(plan.skip.iter().map(|(at, _)| *at));
            outcomes.sort();
            let expected: Vec<_> = (0..=99).map(|n| at(n * 10)).collect();
            assert_eq!(outcomes, expected, "{policy:?}");
        }
    }

    #[test]
    fn a_backlog_larger_than_one_pass_keeps_only_the_latest_for_the_last_pass() {
        let every_second = |t: DateTime<Utc>| Some(t + chrono::Duration::seconds(1));
        let now = at(5000);
        let first = plan(at(0), now, rule(MisfirePolicy::FireOnce), every_second);
        assert!(first.fire.is_empty());
        assert_eq!(first.skip.len(), MAX_OCCURRENCES_PER_PASS);
        let resume = first.next_fire_at.expect("more to do");
        assert_eq!(resume, at(1000));
        let mut cursor = resume;
        let mut fired = Vec::new();
        loop {
            let pass = plan(cursor, now, rule(MisfirePolicy::FireOnce), every_second);
            fired.extend(pass.fire);
            match pass.next_fire_at {
                Some(next) if next <= now => cursor = next,
                _ => break,
            }
        }
        let on_time: Vec<_> = (4985..=5000).map(at).collect();
        assert_eq!(
            fired[0],
            at(4984),
            "one task for all missed, the latest late one"
        );
        assert_eq!(&fired[1..], on_time.as_slice());
    }

    #[test]
    fn occurrences_within_the_horizon_fire_ahead_and_lateness_is_judged_against_now() {
        // Due: 0 (late past the 15 s grace at 20), 10 (on time); ahead: 20, 30; beyond: 40.
        let plan = plan_ahead(at(0), at(20), at(35), rule(MisfirePolicy::Skip), every_ten);
        assert_eq!(plan.skip, vec![(at(0), SkipReason::Misfire)]);
        assert_eq!(plan.fire, vec![at(10), at(20), at(30)]);
        assert_eq!(plan.next_fire_at, Some(at(40)));
        let nothing_ahead =
            plan_ahead(at(40), at(20), at(35), rule(MisfirePolicy::Skip), every_ten);
        assert!(nothing_ahead.fire.is_empty() && nothing_ahead.skip.is_empty());
        assert_eq!(nothing_ahead.next_fire_at, Some(at(40)));
    }

    #[test]
    fn excluded_occurrences_are_set_apart_before_the_misfire_policy_and_keep_one_outcome() {
        // 30 and 40 are excluded; under fire_once the latest late one not excluded (20) fires.
        let excluded = |t: DateTime<Utc>| {
            [at(30), at(40)]
                .contains(&t)
                .then(|| "maintenance".to_owned())
        };
        let plan = plan_excluding(
            at(0),
            at(65),
            at(65),
            rule(MisfirePolicy::FireOnce),
            every_ten,
            excluded,
        );
        assert_eq!(
            plan.excluded,
            [
                (at(30), "maintenance".to_owned()),
                (at(40), "maintenance".to_owned())
            ]
        );
        assert_eq!(plan.fire, [at(20), at(50), at(60)]);
        assert_eq!(
            plan.skip,
            [
                (at(0), SkipReason::Coalesced),
                (at(10), SkipReason::Coalesced)
            ]
        );
        let on_time = plan_excluding(
            at(100),
            at(125),
            at(125),
            rule(MisfirePolicy::Skip),
            every_ten,
            |t| (t == at(110)).then(|| "holidays".to_owned()),
        );
        assert_eq!(on_time.fire, [at(120)]);
        assert_eq!(on_time.excluded, [(at(110), "holidays".to_owned())]);
        assert_eq!(on_time.skip, [(at(100), SkipReason::Misfire)]);
    }

    #[test]
    fn the_end_of_a_schedule_leaves_no_next_fire_time() {
        let plan = plan(at(990), at(2000), rule(MisfirePolicy::Skip), every_ten);
        assert_eq!(plan.next_fire_at, None);
        assert_eq!(plan.skip.len(), 2);
    }

    #[test]
    fn overlap_policies_decide_per_open_work() {
        use Admission::{Refuse, Replace, Start, Wait};
        let idle = OpenWork::default();
        let running = OpenWork {
            running: true,
            waiting: false,
        };
        let full = OpenWork {
            running: true,
            waiting: true,
        };
        let cases = [
            (OverlapPolicy::Allow, [Start, Start, Start]),
            (
                OverlapPolicy::Skip,
                [
                    Start,
                    Refuse(SkipReason::Overlap),
                    Refuse(SkipReason::Overlap),
                ],
            ),
            (
                OverlapPolicy::BufferOne,
                [Start, Wait, Refuse(SkipReason::BufferFull)],
            ),
            (OverlapPolicy::Replace, [Start, Replace, Replace]),
        ];
        for (policy, expected) in cases {
            for (open, admission) in [idle, running, full].into_iter().zip(expected) {
                assert_eq!(policy.admit(open), admission, "{policy:?} with {open:?}");
            }
        }
    }

    #[test]
    fn a_burst_under_buffer_one_starts_one_queues_one_and_skips_the_rest() {
        let policy = OverlapPolicy::BufferOne;
        let mut open = OpenWork::default();
        let mut admissions = Vec::new();
        for _ in 0..4 {
            let admission = policy.admit(open);
            open = policy.after(open, admission);
            admissions.push(admission);
        }
        assert_eq!(
            admissions,
            [
                Admission::Start,
                Admission::Wait,
                Admission::Refuse(SkipReason::BufferFull),
                Admission::Refuse(SkipReason::BufferFull)
            ]
        );
    }
}
