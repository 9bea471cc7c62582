//! End-to-end: the cluster (README "The cluster", promise 1). Real `pacer serve` nodes share one
//! database while their leader is killed, frozen or shut down; every occurrence of every trigger
//! still gets exactly one outcome, written under the term of the leader that held the lease.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use pacer_tests::{Api, FakeDownstream, NodeSettings, PacerProcess, Reply, TestDb, wait_until};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Generous: these waits cover node starts and firing passes on a loaded two-core machine.
const SETTLE: Duration = Duration::from_secs(30);

/// The short lease of [`fast_node`]; a crashed leader is replaced within it plus a renewal period.
const FAST_LEASE_TTL: Duration = Duration::from_secs(2);

/// How often the lease row and the logs are looked at while a failover is timed.
const POLL: Duration = Duration::from_millis(20);

/// The log lines with which a leader gives its duties up for a reason other than shutting down.
const STEP_DOWN_MESSAGES: [&str; 4] = [
    "the lease was not renewed within its trust window; stepping down",
    "another node holds the lease; stepping down",
    "a leader duty found its term fenced; stepping down",
    "renewing the lease failed; stepping down",
];

/// Node settings shared by every test here: heartbeats twice a second, dead after 2 s, and a
/// small pool, since several nodes of several tests share one PostgreSQL.
fn node(id: &str) -> NodeSettings {
    NodeSettings::new(id)
        .env("PACER_CLUSTER__HEARTBEAT_INTERVAL", "500ms")
        .env("PACER_CLUSTER__DEAD_AFTER", "2s")
        .env("PACER_DATABASE__MAX_CONNECTIONS", "8")
}

/// A node with a 2 s lease, so a crashed leader is replaced quickly: renewed every ~667 ms and
/// trusted by its holder for ~1.67 s.
fn fast_node(id: &str) -> NodeSettings {
    node(id).env("PACER_CLUSTER__LEASE_TTL", "2s")
}

/// Creates `jobs` jobs with `per_job` triggers each, every one an interval of 1 s (aligned to
/// the epoch, so due on every whole second) under `fire_once` with the default 60 s grace.
/// Returns the first whole second at which every one of them fires.
async fn every_second_triggers(
    api: &Api,
    db: &TestDb,
    downstream: &FakeDownstream,
    jobs: usize,
    per_job: usize,
) -> DateTime<Utc> {
    for job in 0..jobs {
        let name = format!("tick-{job}");
        // A plain webhook answered 200 at once, so dispatching stays cheap beside the firing.
        api.put_job(
            &name,
            &json!({ "target": { "url": downstream.url("/tick") }, "expect_callback": false }),
        )
        .await;
        for _ in 0..per_job {
            let trigger = json!({ "kind": "interval", "every": "1s", "misfire": "fire_once" });
            let created = api
                .request(
                    Method::POST,
                    &format!("/api/v1/jobs/{name}/triggers"),
                    Some(&trigger),
                    &[],
                )
                .await;
            created.expect_status(201);
        }
    }
    // Each trigger's first fire time is the first whole second after its creation.
    sqlx::query_scalar(
        "select date_trunc('second', max(created_at)) + interval '1 second' from triggers",
    )
    .fetch_one(db.pool())
    .await
    .expect("the triggers are readable")
}

/// Share locks held on the lease row: a firing transaction is open.
async fn lease_locks(db: &TestDb) -> i64 {
    // `select … for share` holds a RowShareLock on the table until its transaction ends.
    sqlx::query_scalar(
        "select count(*) from pg_locks
         where relation = 'leader_lease'::regclass and mode = 'RowShareLock' and granted",
    )
    .fetch_one(db.pool())
    .await
    .expect("the locks are readable")
}

/// The database clock.
async fn db_now(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("select now()")
        .fetch_one(db.pool())
        .await
        .expect("the database answers")
}

/// Waits until the leader has fired every occurrence up to `seconds` whole seconds from now (on
/// the database clock), and returns that second: time passes with the leader at work.
async fn fire_on_for(db: &TestDb, seconds: i64) -> DateTime<Utc> {
    let now = db_now(db).await;
    let to = DateTime::from_timestamp(now.timestamp() + seconds, 0).expect("an instant");
    wait_until_fired_through(db, to).await;
    to
}

/// The last whole second that has fully passed on the database clock.
async fn last_whole_second(db: &TestDb) -> DateTime<Utc> {
    sqlx::query_scalar("select date_trunc('second', now()) - interval '1 second'")
        .fetch_one(db.pool())
        .await
        .expect("the database answers")
}

/// Waits for a valid lease and returns its holder and term.
async fn current_leader(db: &TestDb) -> (String, i64) {
    wait_until("a node to hold the lease", SETTLE, || async {
        sqlx::query_as(
            "select holder, term from leader_lease where holder is not null and expires_at > now()",
        )
        .fetch_optional(db.pool())
        .await
        .expect("the lease is readable")
    })
    .await
}

/// Waits until the leader has fired every occurrence up to `to`: no trigger is due by then.
async fn wait_until_fired_through(db: &TestDb, to: DateTime<Utc>) {
    let what = format!("every occurrence up to {to} to be fired");
    // `to` may still lie ahead: the deadline counts from it.
    let ahead = (to - db_now(db).await).to_std().unwrap_or_default();
    wait_until(&what, ahead + SETTLE, || async {
        let behind: i64 =
            sqlx::query_scalar("select count(*) from triggers where next_fire_at <= $1")
                .bind(to)
                .fetch_one(db.pool())
                .await
                .expect("the triggers are readable");
        (behind == 0).then_some(())
    })
    .await;
}

/// Waits until `term` has created at least `count` tasks.
async fn wait_for_tasks_of_term(db: &TestDb, term: i64, count: i64) {
    let what = format!("{count} tasks fired under term {term}");
    wait_until(&what, SETTLE, || async {
        let fired: i64 = sqlx::query_scalar("select count(*) from tasks where fired_term = $1")
            .bind(term)
            .fetch_one(db.pool())
            .await
            .expect("the tasks are readable");
        (fired >= count).then_some(())
    })
    .await;
}

/// Checks `check` every 20 ms until it returns `Some`; returns the value and how long after
/// `since` it was seen. Panics naming `what` after [`SETTLE`].
async fn time_until<T>(
    what: &str,
    since: Instant,
    mut check: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    loop {
        if let Some(value) = check() {
            return (value, since.elapsed());
        }
        assert!(
            since.elapsed() < SETTLE,
            "timed out after {SETTLE:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The terms a node logged `became leader` with.
fn became_leader_terms(node: &PacerProcess) -> Vec<i64> {
    node.logs_with_message("became leader")
        .iter()
        .filter_map(|line| line["leader.term"].as_i64())
        .collect()
}

/// The term a node leads under according to its own log: its last `became leader` not followed
/// by `stopped leader duties` for the same term.
fn leading_term(node: &PacerProcess) -> Option<i64> {
    let mut leading = None;
    for line in node.logs() {
        let term = line["leader.term"].as_i64();
        if line["message"] == "became leader" {
            leading = term;
        } else if line["message"] == "stopped leader duties" && term == leading {
            leading = None;
        }
    }
    leading
}

/// A holder and term of the lease, and when this test first saw them.
#[derive(Debug, Clone)]
struct Tenure {
    holder: Option<String>,
    term: i64,
    acquired_at: Option<DateTime<Utc>>,
    seen: Instant,
}

/// Reads the lease row every 20 ms in the background and keeps every change of holder or term,
/// so failovers are timed at the database and every leader of the test is known.
struct LeaseWatch {
    seen: Arc<Mutex<Vec<Tenure>>>,
    task: JoinHandle<()>,
}

impl LeaseWatch {
    fn start(pool: PgPool) -> Self {
        let seen: Arc<Mutex<Vec<Tenure>>> = Arc::default();
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let row = sqlx::query_as::<_, (Option<String>, i64, Option<DateTime<Utc>>)>(
                    "select holder, term, acquired_at from leader_lease",
                )
                .fetch_one(&pool)
                .await;
                let now = Instant::now();
                match row {
                    Ok((holder, term, acquired_at)) => {
                        let mut seen = sink.lock().unwrap_or_else(PoisonError::into_inner);
                        let changed = seen
                            .last()
                            .is_none_or(|last| last.holder != holder || last.term != term);
                        if changed {
                            seen.push(Tenure {
                                holder,
                                term,
                                acquired_at,
                                seen: now,
                            });
                        }
                    }
                    Err(error) => {
                        // Before the first node has migrated the database there is no lease row.
                        let started = !sink
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .is_empty();
                        if started {
                            eprintln!("the lease watch could not read the lease: {error}");
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        });
        Self { seen, task }
    }

    /// Every state of the lease seen so far, in order.
    fn history(&self) -> Vec<Tenure> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The tenures seen so far (the lease had a holder), in order.
    fn leaders(&self) -> Vec<Tenure> {
        self.history()
            .into_iter()
            .filter(|t| t.holder.is_some())
            .collect()
    }

    /// Waits for a holder with a term above `term`; returns it and how long after `since` it
    /// was first seen.
    async fn successor(&self, term: i64, since: Instant) -> (Tenure, Duration) {
        let what = format!("a leader with a term above {term}");
        let (tenure, _) = time_until(&what, since, || {
            self.leaders().into_iter().find(|t| t.term > term)
        })
        .await;
        let took = tenure.seen.saturating_duration_since(since);
        (tenure, took)
    }

    /// Asserts that the terms of successive leaders grew strictly, and returns them.
    fn assert_terms_increase(&self) -> Vec<i64> {
        let leaders = self.leaders();
        let terms: Vec<i64> = leaders.iter().map(|t| t.term).collect();
        assert!(
            terms.windows(2).all(|pair| pair[0] < pair[1]),
            "every new leader has a higher term: {leaders:#?}"
        );
        terms
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asserts that each trigger has exactly one outcome for every whole second in `[from, to]` (a
/// task or a recorded skip), and that no occurrence at all has two, in either table or across
/// them. Returns how many of the outcomes in the window are tasks and how many are skips.
async fn assert_exactly_once(
    db: &TestDb,
    triggers: i64,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (i64, i64) {
    let pool = db.pool();
    let existing: i64 = sqlx::query_scalar("select count(*) from triggers")
        .fetch_one(pool)
        .await
        .expect("the triggers are countable");
    assert_eq!(existing, triggers);
    assert!(from < to, "an empty observation window [{from}, {to}]");

    let wrong: Vec<(String, DateTime<Utc>, i64, Option<String>)> = sqlx::query_as(
        "with occurrence as (
             select t.id as trigger_id, s.at
             from triggers t
             cross join generate_series($1::timestamptz, $2::timestamptz, interval '1 second') s(at)
         ), outcome as (
             select trigger_id, scheduled_at, 'task (term ' || fired_term || ')' as kind
             from tasks where origin = 'trigger'
             union all
             select trigger_id, scheduled_at, 'skip ' || reason || ' (term ' || fired_term || ')'
             from skipped_runs
         )
         select o.trigger_id::text, o.at, count(x.kind), string_agg(x.kind, ', ')
         from occurrence o
         left join outcome x on x.trigger_id = o.trigger_id and x.scheduled_at = o.at
         group by o.trigger_id, o.at
         having count(x.kind) <> 1
         order by o.at, o.trigger_id
         limit 50",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .expect("the occurrences are checkable");
    assert!(
        wrong.is_empty(),
        "every occurrence in [{from}, {to}] has exactly one outcome; these (trigger, second, \
         outcomes) do not:\n{wrong:#?}"
    );

    let twice: Vec<(String, DateTime<Utc>, i64)> = sqlx::query_as(
        "select trigger_id::text, scheduled_at, count(*) from tasks
         where trigger_id is not null group by trigger_id, scheduled_at having count(*) > 1
         union all
         select trigger_id::text, scheduled_at, count(*) from skipped_runs
         where trigger_id is not null group by trigger_id, scheduled_at having count(*) > 1
         union all
         select t.trigger_id::text, t.scheduled_at, 2 from tasks t
         join skipped_runs s on s.trigger_id = t.trigger_id and s.scheduled_at = t.scheduled_at",
    )
    .fetch_all(pool)
    .await
    .expect("the duplicates are checkable");
    assert!(
        twice.is_empty(),
        "no occurrence has two outcomes: {twice:#?}"
    );
    let off_beat: i64 = sqlx::query_scalar(
        "select count(*) from tasks
         where origin = 'trigger' and scheduled_at <> date_trunc('second', scheduled_at)",
    )
    .fetch_one(pool)
    .await
    .expect("the tasks are countable");
    assert_eq!(
        off_beat, 0,
        "an every-second trigger fires on whole seconds"
    );

    let (tasks, skips): (i64, i64) = sqlx::query_as(
        "select (select count(*) from tasks
                 where origin = 'trigger' and scheduled_at between $1 and $2),
                (select count(*) from skipped_runs where scheduled_at between $1 and $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
    .expect("the outcomes are countable");
    let seconds = (to - from).num_seconds() + 1;
    assert_eq!(tasks + skips, triggers * seconds);
    (tasks, skips)
}

/// An outcome written outside its term's tenure: what, term, when written, and the tenure.
type OutsideTenure = (
    String,
    Option<i64>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// Asserts that every task and skip a trigger produced carries the term of a leader this test
/// saw, and was written during that leader's tenure: not before its lease was acquired, and not
/// once the next leader's was. (A firing transaction holds a share lock on the lease row, so
/// no takeover can commit while one under the old term is still open.)
async fn assert_written_within_tenures(db: &TestDb, leaders: &[Tenure]) {
    let terms: Vec<i64> = leaders.iter().map(|t| t.term).collect();
    let began: Vec<DateTime<Utc>> = leaders
        .iter()
        .map(|t| t.acquired_at.expect("a held lease has an acquisition time"))
        .collect();
    let outside: Vec<OutsideTenure> = sqlx::query_as(
        "with tenure as (
                 select term, began, lead(began) over (order by term) as ended
                 from unnest($1::bigint[], $2::timestamptz[]) as t(term, began)
             ), outcome as (
                 select 'task at ' || scheduled_at as what, fired_term, created_at as written_at
                 from tasks where origin = 'trigger'
                 union all
                 select 'skip at ' || scheduled_at, fired_term, recorded_at from skipped_runs
             )
             select o.what, o.fired_term, o.written_at, t.began, t.ended
             from outcome o left join tenure t on t.term = o.fired_term
             where t.term is null or o.written_at < t.began or o.written_at >= t.ended
             order by o.written_at
             limit 20",
    )
    .bind(&terms)
    .bind(&began)
    .fetch_all(db.pool())
    .await
    .expect("the outcomes are checkable");
    assert!(
        outside.is_empty(),
        "every outcome was written by a leader seen ({terms:?}) during its tenure; these \
         (what, term, written, tenure began, tenure ended) were not:\n{outside:#?}"
    );
}

/// Milliseconds from an occurrence's second to its task's creation, over the trigger tasks in
/// `[from, to]`: (p50, p99, max).
async fn lateness(db: &TestDb, from: DateTime<Utc>, to: DateTime<Utc>) -> (f64, f64, f64) {
    sqlx::query_as(
        "select percentile_cont(0.5) within group (order by ms),
                percentile_cont(0.99) within group (order by ms),
                max(ms)
         from (select extract(epoch from created_at - scheduled_at)::float8 * 1000 as ms
               from tasks where origin = 'trigger' and scheduled_at between $1 and $2) late",
    )
    .bind(from)
    .bind(to)
    .fetch_one(db.pool())
    .await
    .expect("the lateness is computable")
}

/// How the test takes a leader away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    Kill,
    Terminate,
}

impl fmt::Display for Disruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Disruption::Kill => "SIGKILL",
            Disruption::Terminate => "SIGTERM",
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_occurrence_fires_exactly_once_while_leaders_are_killed_and_stopped() {
    const JOBS: usize = 5;
    const TRIGGERS_PER_JOB: usize = 10;
    let db = TestDb::create().await;
    let watch = LeaseWatch::start(db.pool().clone());
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    // The first node migrates the database; the others start together.
    let first = PacerProcess::start_with(db.url(), fast_node("node-1")).await;
    let (second, third) = tokio::join!(
        PacerProcess::start_with(db.url(), fast_node("node-2")),
        PacerProcess::start_with(db.url(), fast_node("node-3")),
    );
    let mut nodes = vec![first, second, third];
    let mut gone: Vec<(Disruption, PacerProcess)> = Vec::new();
    let from =
        every_second_triggers(&nodes[0].api(), &db, &downstream, JOBS, TRIGGERS_PER_JOB).await;
    let triggers = i64::try_from(JOBS * TRIGGERS_PER_JOB).expect("a small count");

    let mut failovers = Vec::new();
    for (round, disruption) in [Disruption::Kill, Disruption::Kill, Disruption::Terminate]
        .into_iter()
        .enumerate()
    {
        // Let the leader of the moment fire for a while first.
        fire_on_for(&db, 5).await;
        let (holder, term) = current_leader(&db).await;
        let index = nodes
            .iter()
            .position(|n| n.node_id() == holder)
            .unwrap_or_else(|| panic!("the leader {holder} is one of the running nodes"));
        let mut leader = nodes.remove(index);
        let sent = Instant::now();
        match disruption {
            Disruption::Kill => {
                leader.kill();
            }
            Disruption::Terminate => leader.terminate(),
        }
        let (successor, took) = watch.successor(term, sent).await;
        eprintln!(
            "failover after {disruption} of {holder} (term {term}): {} took over with term {} \
             after {took:?}",
            successor.holder.as_deref().unwrap_or_default(),
            successor.term
        );
        failovers.push((disruption, took));
        let limit = match disruption {
            Disruption::Kill => FAST_LEASE_TTL + Duration::from_secs(2),
            Disruption::Terminate => Duration::from_secs(1),
        };
        assert!(
            took <= limit,
            "after {disruption} of the leader a new one leads within {limit:?}, took {took:?}: {:#?}",
            watch.history()
        );
        assert_ne!(successor.holder.as_deref(), Some(holder.as_str()));
        if disruption == Disruption::Terminate {
            let status = leader.wait_exit(SETTLE).await;
            assert_eq!(status.code(), Some(0), "{}", leader.output());
            let resigned = leader.logs_with_message("resigned the lease");
            assert_eq!(resigned.len(), 1, "{}", leader.output());
            assert_eq!(resigned[0]["leader.term"], term);
        }
        gone.push((disruption, leader));
        let replacement = format!("node-{}", round + 4);
        nodes.push(PacerProcess::start_with(db.url(), fast_node(&replacement)).await);
    }

    // At least 30 s observed in all, then everything up to the last whole second is checked.
    let to = from + chrono::TimeDelta::seconds(32);
    wait_until_fired_through(&db, to).await;
    let (tasks, skips) = assert_exactly_once(&db, triggers, from, to).await;
    assert_eq!(
        skips, 0,
        "no occurrence was later than the 60 s grace, so fire_once gives each its own task"
    );

    // Terms only grow, every leader was seen, and each wrote only during its own tenure.
    // At least four: the first leader and one successor per disruption (a leader starved of CPU
    // past its trust window may also hand over on its own).
    let terms = watch.assert_terms_increase();
    assert!(terms.len() >= 4, "{:#?}", watch.history());
    let logged: BTreeSet<i64> = nodes
        .iter()
        .chain(gone.iter().map(|(_, node)| node))
        .flat_map(became_leader_terms)
        .collect();
    assert_eq!(
        logged,
        terms.iter().copied().collect::<BTreeSet<_>>(),
        "the nodes' logs name the same terms as the lease row"
    );
    let fired_terms: BTreeSet<i64> = sqlx::query_scalar(
        "select distinct fired_term from tasks where origin = 'trigger' and fired_term is not null",
    )
    .fetch_all(db.pool())
    .await
    .expect("the terms are readable")
    .into_iter()
    .collect();
    assert!(
        fired_terms.iter().all(|term| terms.contains(term)),
        "tasks were fired only under observed terms {terms:?}; found {fired_terms:?}"
    );
    assert_written_within_tenures(&db, &watch.leaders()).await;

    // The cluster view agrees with the lease row and tells live, crashed and stopped nodes apart.
    let (holder, term) = current_leader(&db).await;
    assert_eq!(Some(&term), terms.last());
    let view = nodes[0]
        .api()
        .request(Method::GET, "/api/v1/cluster", None, &[])
        .await;
    let view = view.expect_status(200);
    assert_eq!(view["leader"]["node"], holder.as_str(), "{view:#}");
    assert_eq!(view["leader"]["term"], term, "{view:#}");
    assert_eq!(view["term"], term, "{view:#}");
    let listed = |id: &str| -> Value {
        view["nodes"]
            .as_array()
            .and_then(|all| all.iter().find(|n| n["id"] == id).cloned())
            .unwrap_or_else(|| panic!("the cluster view lists {id}: {view:#}"))
    };
    for running in &nodes {
        let entry = listed(running.node_id());
        assert_eq!(entry["alive"], true, "{entry:#}");
        assert_eq!(entry["stopped_at"], Value::Null, "{entry:#}");
        assert_eq!(entry["address"], running.url(), "{entry:#}");
    }
    for (disruption, node) in &gone {
        let entry = listed(node.node_id());
        assert_eq!(entry["alive"], false, "{entry:#}");
        let stopped = entry["stopped_at"] != Value::Null;
        assert_eq!(
            stopped,
            *disruption == Disruption::Terminate,
            "only a node that stopped cleanly records its stop: {entry:#}"
        );
    }
    // Skips are visible through the API too: there are none.
    for job in 0..JOBS {
        let listed = nodes[1]
            .api()
            .request(
                Method::GET,
                &format!("/api/v1/skips?job=tick-{job}"),
                None,
                &[],
            )
            .await;
        assert_eq!(listed.expect_status(200)["items"], json!([]));
    }

    let (p50, p99, max) = lateness(&db, from, to).await;
    eprintln!(
        "exactly once: {triggers} triggers x {} s = {tasks} tasks in [{from}, {to}]; terms \
         {terms:?}; failovers {failovers:?}; lateness p50 {p50:.0} ms, p99 {p99:.0} ms, \
         max {max:.0} ms",
        (to - from).num_seconds() + 1
    );
}

/// Freezes `node` with SIGSTOP while it holds no fenced transaction open, and returns when the
/// signal was sent. Frozen inside one (a firing pass, or another leader duty such as pruning or
/// alerting), the node would keep its share lock on the lease row until the server ends its
/// idle session (a different path from the fencing this test checks). So it is frozen right
/// after the lease row is seen unlocked, and if a transaction began in between, it is thawed
/// and frozen again.
async fn freeze_between_firing_passes(db: &TestDb, node: &PacerProcess) -> Instant {
    for _ in 0..20 {
        wait_until(
            "the leader to end its fenced transaction",
            SETTLE,
            || async { (lease_locks(db).await == 0).then_some(()) },
        )
        .await;
        let sent = Instant::now();
        node.signal("STOP");
        // Not a wait for an outcome: a statement the node sent just before it froze may still be
        // on its way; the lock check below decides, and a wrong guess is retried.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if lease_locks(db).await == 0 {
            return sent;
        }
        eprintln!(
            "{} was frozen inside a fenced transaction; thawing it to try again",
            node.node_id()
        );
        node.signal("CONT");
    }
    panic!(
        "{} could not be frozen outside a fenced transaction",
        node.node_id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_writes_nothing_once_another_node_has_taken_over() {
    let db = TestDb::create().await;
    let watch = LeaseWatch::start(db.pool().clone());
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    let node_a = PacerProcess::start_with(db.url(), fast_node("node-a")).await;
    let node_b = PacerProcess::start_with(db.url(), fast_node("node-b")).await;
    let from = every_second_triggers(&node_a.api(), &db, &downstream, 2, 5).await;
    let triggers = 10;

    let (holder, old_term) = current_leader(&db).await;
    let (frozen, other) = if holder == node_a.node_id() {
        (&node_a, &node_b)
    } else {
        (&node_b, &node_a)
    };
    wait_for_tasks_of_term(&db, old_term, 2 * triggers).await;
    let sent = freeze_between_firing_passes(&db, frozen).await;
    let old_expiry: DateTime<Utc> =
        sqlx::query_scalar("select expires_at from leader_lease where holder = $1 and term = $2")
            .bind(&holder)
            .bind(old_term)
            .fetch_optional(db.pool())
            .await
            .expect("the lease is readable")
            .expect("nobody has taken the lease over 100 ms after the freeze");

    let (successor, took) = watch.successor(old_term, sent).await;
    eprintln!(
        "fencing: {holder} frozen under term {old_term}; {} took over with term {} after {took:?}",
        successor.holder.as_deref().unwrap_or_default(),
        successor.term
    );
    assert_eq!(successor.holder.as_deref(), Some(other.node_id()));
    let takeover = successor
        .acquired_at
        .expect("a held lease has an acquisition time");
    assert!(
        takeover >= old_expiry,
        "taken over only once the frozen leader's lease ran out"
    );
    // Let the successor fire two more seconds, on time, while the old leader is still frozen.
    let frozen_until = takeover
        .duration_trunc(chrono::TimeDelta::seconds(1))
        .expect("a second")
        + chrono::TimeDelta::seconds(2);
    wait_until_fired_through(&db, frozen_until).await;

    let written_by_old_term = || async {
        sqlx::query_as::<_, (i64, Option<DateTime<Utc>>)>(
            "select count(*), max(written_at) from (
                 select created_at as written_at from tasks where fired_term = $1
                 union all
                 select recorded_at from skipped_runs where fired_term = $1
             ) old",
        )
        .bind(old_term)
        .fetch_one(db.pool())
        .await
        .expect("the outcomes are countable")
    };
    let before_thaw = written_by_old_term().await;
    frozen.signal("CONT");
    let thawed = Instant::now();
    let (stepped_down, after) = time_until("the thawed leader to step down", thawed, || {
        frozen.logs().into_iter().find(|line| {
            line["message"] == "stopped leader duties" && line["leader.term"] == old_term
        })
    })
    .await;
    assert!(
        after <= Duration::from_secs(5),
        "the thawed leader stepped down within a few seconds, took {after:?}: {stepped_down}"
    );
    let reasons: Vec<Value> = frozen
        .logs()
        .into_iter()
        .filter_map(|line| {
            STEP_DOWN_MESSAGES
                .iter()
                .any(|m| line["message"] == *m)
                .then(|| line["message"].clone())
        })
        .collect();
    eprintln!("fencing: the thawed leader stopped its duties {after:?} after SIGCONT: {reasons:?}");
    assert!(
        !reasons.is_empty(),
        "the thawed leader said why it stepped down\n{}",
        frozen.output()
    );

    // Fenced: nothing was written under the old term once the lease had passed to the successor,
    // before or after the thaw, while the successor fires on.
    fire_on_for(&db, 2).await;
    let after_thaw = written_by_old_term().await;
    assert_eq!(
        after_thaw, before_thaw,
        "the thawed leader wrote nothing under term {old_term}"
    );
    let (count, last) = after_thaw;
    assert!(
        count >= 2 * triggers,
        "term {old_term} fired before the freeze"
    );
    let last = last.unwrap_or_else(|| panic!("term {old_term} wrote something"));
    assert!(
        last < old_expiry && last < takeover,
        "term {old_term} wrote last at {last}, before its lease expired at {old_expiry} and \
         before the takeover at {takeover}"
    );

    // Exactly one node leads afterwards, by its own log and by the lease row; the thawed node
    // did not take the lease back.
    let (holder, term) = current_leader(&db).await;
    let leading: Vec<(&str, i64)> = [frozen, other]
        .into_iter()
        .filter_map(|node| leading_term(node).map(|term| (node.node_id(), term)))
        .collect();
    assert_eq!(
        leading,
        [(holder.as_str(), term)],
        "one leader, the lease's holder\n{}\n{}",
        frozen.output(),
        other.output()
    );
    assert_eq!(
        became_leader_terms(frozen),
        [old_term],
        "{}",
        frozen.output()
    );
    watch.assert_terms_increase();

    // Firing carried on through the freeze and the thaw, exactly once.
    let to = last_whole_second(&db).await;
    wait_until_fired_through(&db, to).await;
    assert_exactly_once(&db, triggers, from, to).await;
    assert_written_within_tenures(&db, &watch.leaders()).await;
    let (p50, p99, max) = lateness(&db, from, to).await;
    eprintln!(
        "fencing: lateness in [{from}, {to}] p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_shuts_down_resigns_and_its_follower_takes_over_at_once() {
    let db = TestDb::create().await;
    let watch = LeaseWatch::start(db.pool().clone());
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    // A 10 s lease: only the resignation explains a takeover within a second.
    let slow = |id| node(id).env("PACER_CLUSTER__LEASE_TTL", "10s");
    let mut node_a = PacerProcess::start_with(db.url(), slow("node-a")).await;
    let mut node_b = PacerProcess::start_with(db.url(), slow("node-b")).await;
    let from = every_second_triggers(&node_a.api(), &db, &downstream, 2, 5).await;
    let triggers = 10;

    let (holder, old_term) = current_leader(&db).await;
    let (leader, follower) = if holder == node_a.node_id() {
        (&mut node_a, &mut node_b)
    } else {
        (&mut node_b, &mut node_a)
    };
    wait_for_tasks_of_term(&db, old_term, 2 * triggers).await;

    let sent = Instant::now();
    leader.terminate();
    let (_, logged) = time_until("the follower to log `became leader`", sent, || {
        became_leader_terms(follower)
            .into_iter()
            .find(|term| *term > old_term)
    })
    .await;
    let (successor, took) = watch.successor(old_term, sent).await;
    eprintln!(
        "resignation: the lease passed from term {old_term} to {} under term {} after {took:?}; \
         `became leader` logged after {logged:?}",
        successor.holder.as_deref().unwrap_or_default(),
        successor.term
    );
    assert_eq!(successor.holder.as_deref(), Some(follower.node_id()));
    assert_eq!(successor.term, old_term + 1);
    assert!(
        took <= Duration::from_secs(1) && logged <= Duration::from_secs(1),
        "the follower leads within 1 s of the SIGTERM (lease row after {took:?}, log after \
         {logged:?}), not after the 10 s lease: {:#?}",
        watch.history()
    );

    let status = leader.wait_exit(SETTLE).await;
    assert_eq!(status.code(), Some(0), "{}", leader.output());
    let resigned = leader.logs_with_message("resigned the lease");
    assert_eq!(resigned.len(), 1, "{}", leader.output());
    assert_eq!(resigned[0]["leader.term"], old_term);
    assert_eq!(leading_term(leader), None, "{}", leader.output());

    // The stopped node says so in the nodes table and the cluster view.
    let (stopped_at, heartbeat): (Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as("select stopped_at, last_heartbeat_at from nodes where id = $1")
            .bind(leader.node_id())
            .fetch_one(db.pool())
            .await
            .expect("the node row is readable");
    let stopped_at = stopped_at.expect("a node that stopped cleanly records its stop");
    assert!(stopped_at >= heartbeat);
    let view = follower
        .api()
        .request(Method::GET, "/api/v1/cluster", None, &[])
        .await;
    let view = view.expect_status(200);
    assert_eq!(view["leader"]["node"], follower.node_id(), "{view:#}");
    assert_eq!(view["leader"]["term"], successor.term, "{view:#}");
    let nodes = view["nodes"].as_array().expect("the view lists nodes");
    let entry = |id: &str| {
        nodes
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("the cluster view lists {id}: {view:#}"))
    };
    let stopped = entry(leader.node_id());
    assert_eq!(stopped["alive"], false, "{view:#}");
    assert_eq!(
        pacer_tests::timestamp(&stopped["stopped_at"]),
        stopped_at,
        "{view:#}"
    );
    assert_eq!(entry(follower.node_id())["alive"], true, "{view:#}");

    // The follower fires on from where the stopped leader left off, exactly once.
    let to = fire_on_for(&db, 3).await;
    let (_, skips) = assert_exactly_once(&db, triggers, from, to).await;
    assert_eq!(skips, 0, "no occurrence came anywhere near the 60 s grace");
    assert_eq!(watch.assert_terms_increase(), [old_term, old_term + 1]);
    assert_written_within_tenures(&db, &watch.leaders()).await;
    let (p50, p99, max) = lateness(&db, from, to).await;
    eprintln!(
        "resignation: lateness in [{from}, {to}] p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"
    );
}

/// A task's job, created_at, due_at and scheduled_at.
/// Defines a job per name, each POSTing to `/<name>` on `downstream`.
async fn put_jobs(api: &Api, downstream: &FakeDownstream, names: &[&str], expect_callback: bool) {
    for name in names {
        api.put_job(
            name,
            &json!({
                "target": { "url": downstream.url(&format!("/{name}")) },
                "expect_callback": expect_callback,
            }),
        )
        .await;
    }
}

/// Gives each job a `once` trigger, all at the same instant `lead` after the database's now,
/// and returns that instant.
async fn once_at_one_instant(
    api: &Api,
    db: &TestDb,
    jobs: &[&str],
    lead: Duration,
) -> DateTime<Utc> {
    let now = db_now(db).await;
    let lead = i64::try_from(lead.as_millis()).expect("a short lead");
    let at = DateTime::from_timestamp_millis(now.timestamp_millis() + lead).expect("an instant");
    for name in jobs {
        api.request(
            Method::POST,
            &format!("/api/v1/jobs/{name}/triggers"),
            Some(&json!({ "kind": "once", "at": at })),
            &[],
        )
        .await
        .expect_status(201);
    }
    at
}

/// When the (one) task of `job` finished, once it has.
async fn finished_at(db: &TestDb, job: &str) -> DateTime<Utc> {
    wait_until("the task to finish", SETTLE, || async {
        sqlx::query_scalar(
            "select finished_at from tasks where job_name = $1 and finished_at is not null",
        )
        .bind(job)
        .fetch_optional(db.pool())
        .await
        .expect("the task is readable")
    })
    .await
}

/// The first request the downstream received on `path`.
fn request_to(downstream: &FakeDownstream, path: &str) -> Option<pacer_tests::Received> {
    downstream.requests().into_iter().find(|r| r.path == path)
}

type FiredTask = (String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_occurrence_fired_ahead_is_dispatched_at_its_time_and_a_pause_withdraws_it() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    // A wide window, so the test does not depend on how quickly a loaded machine fires.
    let node = PacerProcess::start_with(
        db.url(),
        node("ahead").env("PACER_CLUSTER__FIRE_AHEAD", "6s"),
    )
    .await;
    let api = node.api();
    put_jobs(&api, &downstream, &["kept", "paused"], false).await;
    let at = once_at_one_instant(&api, &db, &["kept", "paused"], Duration::from_secs(9)).await;

    // Both occurrences become tasks well before their time, due at it.
    let created: Vec<FiredTask> =
        wait_until("both occurrences to be fired ahead", SETTLE, || async {
            let rows: Vec<FiredTask> = sqlx::query_as(
                "select job_name, created_at, due_at, scheduled_at from tasks order by job_name",
            )
            .fetch_all(db.pool())
            .await
            .expect("the tasks are readable");
            (rows.len() == 2).then_some(rows)
        })
        .await;
    for (job, created_at, due_at, scheduled_at) in &created {
        assert!(
            created_at < scheduled_at,
            "{job} was fired ahead: {created:?}"
        );
        assert_eq!((due_at, scheduled_at), (&at, &at), "{job}");
    }
    // Pausing a job before its time withdraws its task, even one a node holds ready.
    api.request(Method::POST, "/api/v1/jobs/paused/pause", None, &[])
        .await
        .expect_status(200);
    assert!(
        db_now(&db).await < at,
        "the pause came before the occurrence's time"
    );

    let kept = wait_until("the kept task to be dispatched", SETTLE, || async {
        request_to(&downstream, "/kept")
    })
    .await;
    assert!(
        kept.received_at >= at,
        "dispatched at {} for an occurrence at {at}: never before its time",
        kept.received_at
    );
    let states: Vec<(String, String, i64)> = wait_until("both tasks to end", SETTLE, || async {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "select t.job_name, t.state,
                    (select count(*) from task_attempts a where a.task_id = t.id)
             from tasks t where t.state in ('completed', 'cancelled') order by t.job_name",
        )
        .fetch_all(db.pool())
        .await
        .expect("the tasks are readable");
        (rows.len() == 2).then_some(rows)
    })
    .await;
    assert_eq!(
        states,
        vec![
            ("kept".to_owned(), "completed".to_owned(), 1),
            ("paused".to_owned(), "cancelled".to_owned(), 0),
        ]
    );
    // Never dispatched, so its downstream is not told of a cancel either.
    assert!(
        downstream.requests().iter().all(|r| r.path != "/paused"),
        "the withdrawn task was never dispatched nor noticed: {:?}",
        downstream.requests()
    );
}

/// How many tasks the next test makes due at one instant: more than ten of the small batches tasks are
/// claimed ahead in, and fewer than one full batch of its nodes.
const BURST: usize = 160;

/// The most tasks a node of the next test claims ahead of their time in one look
/// (`dispatch.ahead_batch_size`).
const AHEAD_BATCH: u64 = 12;

/// Every claim of tasks ahead of their time in `node`'s log: how many it took.
fn claims_ahead(node: &PacerProcess) -> Vec<u64> {
    node.logs_with_message("claimed tasks")
        .iter()
        .filter_map(|line| line["ahead"].as_u64())
        .filter(|ahead| *ahead > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_claimed_ahead_in_small_batches_for_the_nodes_to_share() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    // Claims of up to 256 tasks, so that one look could take the whole burst; room for one
    // caller to create it quickly; and each claim in the log.
    let settings = |id: &str| {
        node(id)
            .env("PACER_CLUSTER__FIRE_AHEAD", "3s")
            .env("PACER_DISPATCH__BATCH_SIZE", "256")
            .env("PACER_DISPATCH__AHEAD_BATCH_SIZE", &AHEAD_BATCH.to_string())
            .env("PACER_AUTH__RATE_LIMIT_PER_SECOND", "10000")
            .env("PACER_AUTH__RATE_LIMIT_BURST", "10000")
            .env(
                "PACER_LOG__LEVEL",
                "info,sqlx=warn,pacer_engine::dispatch=debug",
            )
    };
    let first = PacerProcess::start_with(db.url(), settings("share-1")).await;
    // A node can run on one thread, as when it shares a machine with others.
    let second = PacerProcess::start_with(
        db.url(),
        settings("share-2").env("PACER_NODE__WORKER_THREADS", "1"),
    )
    .await;
    let api = first.api();
    put_jobs(&api, &downstream, &["burst"], false).await;
    let now = db_now(&db).await;
    let at = DateTime::from_timestamp_millis(now.timestamp_millis() + 12_000).expect("an instant");
    let mut creating = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let api = api.clone();
        creating.spawn(async move {
            api.request(
                Method::POST,
                "/api/v1/jobs/burst/tasks",
                Some(&json!({ "not_before": at })),
                &[],
            )
            .await
            .expect_status(202);
        });
    }
    while let Some(created) = creating.join_next().await {
        created.expect("the task was created");
    }
    assert!(
        db_now(&db).await < at - chrono::Duration::seconds(3),
        "the burst was created before the nodes could claim any of it ahead"
    );

    let requests = wait_until("the burst to be dispatched", SETTLE, || async {
        let requests = downstream.requests();
        (requests.len() >= BURST).then_some(requests)
    })
    .await;
    // Each task once, none before its time; all of them claimed ahead, a few at a time.
    assert_eq!(requests.len(), BURST, "each task was dispatched once");
    assert!(
        requests.iter().all(|r| r.received_at >= at),
        "no task was dispatched before its time"
    );
    let claims: Vec<u64> = claims_ahead(&first)
        .into_iter()
        .chain(claims_ahead(&second))
        .collect();
    assert_eq!(
        claims.iter().sum::<u64>(),
        u64::try_from(BURST).expect("small"),
        "the whole burst was claimed ahead: {claims:?}"
    );
    assert!(
        claims.iter().all(|claimed| *claimed <= AHEAD_BATCH),
        "no look took more than {AHEAD_BATCH} tasks ahead: {claims:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_hands_back_what_it_claimed_ahead_and_another_sends_it_on_time() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    // A wide window, and a drain long enough that a node keeping the task to send it itself
    // would still be running at its time.
    let settings = |id: &str| {
        node(id)
            .env("PACER_CLUSTER__FIRE_AHEAD", "8s")
            .drain_timeout("30s")
    };
    let mut first = PacerProcess::start_with(db.url(), settings("handing")).await;
    let api = first.api();
    put_jobs(&api, &downstream, &["later"], false).await;
    let at = once_at_one_instant(&api, &db, &["later"], Duration::from_secs(12)).await;
    let task_row = || async {
        sqlx::query_as::<_, (Option<String>, i32)>(
            "select claimed_by, attempt from tasks where job_name = 'later'",
        )
        .fetch_optional(db.pool())
        .await
        .expect("the task is readable")
    };
    wait_until("the task to be claimed ahead", SETTLE, || async {
        task_row()
            .await
            .filter(|(claimed_by, _)| claimed_by.is_some())
    })
    .await;

    // Stopping, the node hands the task back as it was before the claim and leaves well before
    // its time, instead of waiting to send it.
    first.terminate();
    first.wait_exit(SETTLE).await;
    assert!(
        db_now(&db).await < at - chrono::Duration::seconds(2),
        "the node stopped at once, before the task's time"
    );
    assert_eq!(
        task_row().await,
        Some((None, 0)),
        "not claimed, never attempted"
    );
    assert_eq!(
        first
            .logs_with_message("handed back a task not yet due")
            .len(),
        1,
        "{}",
        first.output()
    );
    assert!(
        request_to(&downstream, "/later").is_none(),
        "nothing was sent"
    );

    // Another node claims it ahead in turn and sends it at its time, once.
    let second = PacerProcess::start_with(db.url(), settings("taking")).await;
    finished_at(&db, "later").await;
    let sent = request_to(&downstream, "/later").expect("the task was dispatched");
    assert!(
        sent.received_at >= at,
        "dispatched at {} for an occurrence at {at}: never before its time",
        sent.received_at
    );
    let attempts: Vec<(String, i32)> =
        sqlx::query_as("select node, number from task_attempts order by number")
            .fetch_all(db.pool())
            .await
            .expect("the attempts are readable");
    assert_eq!(attempts, [("taking".to_owned(), 1)]);
    assert_eq!(downstream.requests().len(), 1, "sent once");
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_once_trigger_written_after_its_instant_fires_or_is_skipped_under_its_misfire_policy() {
    let db = TestDb::create().await;
    let downstream = FakeDownstream::start(|_| Reply::status(200)).await;
    let node = PacerProcess::start(db.url(), "node-past").await;
    let api = node.api();
    for job in ["late-fired", "late-skipped"] {
        api.put_job(
            job,
            &json!({ "target": { "url": downstream.url("/late") }, "expect_callback": false }),
        )
        .await;
    }
    let at = "2001-01-01T00:00:00Z";
    for (job, misfire) in [("late-fired", "fire_once"), ("late-skipped", "skip")] {
        let created = api
            .request(
                Method::POST,
                &format!("/api/v1/jobs/{job}/triggers"),
                Some(&json!({ "kind": "once", "at": at, "misfire": misfire })),
                &[],
            )
            .await
            .expect_status(201)
            .clone();
        assert_eq!(created["next_fire_at"], at, "due at once: {created:#}");
    }

    // Neither is silent: one task for `fire_once`, one recorded skip for `skip`.
    let task: (String, DateTime<Utc>) = wait_until("the late occurrence's task", SETTLE, || async {
        sqlx::query_as(
            "select origin, scheduled_at from tasks where job_name = 'late-fired' and trigger_id is not null",
        )
        .fetch_optional(db.pool())
        .await
        .expect("tasks are readable")
    })
    .await;
    assert_eq!(
        task.1,
        DateTime::parse_from_rfc3339(at).expect("an instant")
    );
    let skip: String = wait_until("the late occurrence's skip", SETTLE, || async {
        sqlx::query_scalar("select reason from skipped_runs where job_name = 'late-skipped'")
            .fetch_optional(db.pool())
            .await
            .expect("skips are readable")
    })
    .await;
    assert_eq!(skip, "misfire");
    let skipped_tasks: i64 =
        sqlx::query_scalar("select count(*) from tasks where job_name = 'late-skipped'")
            .fetch_one(db.pool())
            .await
            .expect("tasks are countable");
    assert_eq!(skipped_tasks, 0);
}
