//! Calendars, jitter and backfill on the real PostgreSQL: excluded occurrences become skips
//! naming their calendar, jittered tasks are due at their fire time under the nominal occurrence
//! key, and a backfill creates each missing occurrence once, however often it runs and whatever
//! the trigger fires meanwhile.

use chrono::{DateTime, Utc};
use pacer_domain::{
    CalendarInput, CalendarName, CalendarSpec, JobInput, JobName, JobSpec, Span, TriggerInput,
    TriggerSpec,
};
use pacer_store::{DeleteCalendar, Fired, Job, PutCalendar, Store};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

async fn job(store: &Store, name: &str) -> Job {
    let input: JobInput =
        serde_json::from_value(json!({ "target": { "url": "http://downstream.invalid/run" } }))
            .expect("job input");
    let spec = JobSpec::try_from(input).expect("valid job");
    let name: JobName = name.parse().expect("name");
    store.put_job(&name, &spec).await.expect("put job").job
}

fn trigger(body: Value) -> TriggerSpec {
    let input: TriggerInput = serde_json::from_value(body).expect("trigger input");
    TriggerSpec::try_from(input).expect("valid trigger")
}

fn calendar(body: Value) -> CalendarSpec {
    let input: CalendarInput = serde_json::from_value(body).expect("calendar input");
    CalendarSpec::try_from(input).expect("valid calendar")
}

fn name(text: &str) -> CalendarName {
    text.parse().expect("calendar name")
}

async fn lead(store: &Store) -> i64 {
    store
        .acquire_lease("a", 60_000, false)
        .await
        .expect("lease")
        .expect("held")
        .term
}

/// Whole seconds `ago` before the database's now.
async fn seconds_ago(store: &Store, ago: i64) -> DateTime<Utc> {
    let now = store.now().await.expect("now");
    DateTime::from_timestamp(now.timestamp() - ago, 0).expect("instant")
}

/// A fired task: scheduled, fire time (null without offset), due and next dispatch time.
type JitteredRow = (
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
    DateTime<Utc>,
);

fn clock(at: DateTime<Utc>) -> String {
    at.format("%H:%M:%S").to_string()
}

/// The outcomes recorded for `trigger`: task scheduled times, and skips as (time, reason, detail).
async fn outcomes(
    pool: &PgPool,
    trigger: Uuid,
) -> (
    Vec<DateTime<Utc>>,
    Vec<(DateTime<Utc>, String, Option<String>)>,
) {
    let tasks = sqlx::query_scalar(
        "select scheduled_at from tasks where trigger_id = $1 order by scheduled_at",
    )
    .bind(trigger)
    .fetch_all(pool)
    .await
    .expect("tasks");
    let skips = sqlx::query_as(
        "select scheduled_at, reason, detail from skipped_runs where trigger_id = $1 order by scheduled_at",
    )
    .bind(trigger)
    .fetch_all(pool)
    .await
    .expect("skips");
    (tasks, skips)
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn excluded_occurrences_are_skips_naming_their_calendar_and_a_change_holds_for_the_next_pass(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let work = job(&store, "sync").await;
    let term = lead(&store).await;
    let start = seconds_ago(&store, 9).await;
    // Occurrences −9 s … 0 s; the window covers −9 s … −5 s (its end is excluded).
    let window = calendar(json!({ "exclude": [
        { "kind": "daily", "from": clock(start), "to": clock(start + chrono::Duration::seconds(5)) }
    ]}));
    assert!(matches!(
        store
            .put_calendar(&name("maintenance"), &window)
            .await
            .expect("put"),
        PutCalendar::Saved { created: true, .. }
    ));
    let holidays = calendar(json!({ "include": ["maintenance"] }));
    assert!(matches!(
        store
            .put_calendar(&name("holidays"), &holidays)
            .await
            .expect("put"),
        PutCalendar::Saved { created: true, .. }
    ));
    let spec = trigger(json!({
        "kind": "interval", "every": "1s", "start_at": start, "misfire_grace": "1m",
        "calendars": ["holidays"]
    }));
    let created = store
        .create_trigger(&work, &spec, Some(start))
        .await
        .expect("trigger");
    let Fired::Done {
        tasks,
        skips,
        skip_reasons,
        ..
    } = store
        .fire_due("a", term, 100, Span::from_millis(0))
        .await
        .expect("fire")
    else {
        panic!("fires");
    };
    let (fired, skipped) = outcomes(&pool, created.id).await;
    assert_eq!((tasks, skips), (fired.len(), skipped.len()));
    assert_eq!(skip_reasons, [(pacer_domain::SkipReason::Calendar, 5)]);
    let excluded: Vec<DateTime<Utc>> = (0..5)
        .map(|s| start + chrono::Duration::seconds(s))
        .collect();
    assert_eq!(
        skipped,
        excluded
            .iter()
            .map(|at| (*at, "calendar".to_owned(), Some("maintenance".to_owned())))
            .collect::<Vec<_>>(),
        "the calendar whose rule matched is named, through the include"
    );
    let mut all: Vec<_> = fired.iter().chain(excluded.iter()).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), fired.len() + excluded.len(), "one outcome each");
    assert!(fired.len() >= 5, "the occurrences after the window fire");
    let listed = store
        .list_skipped_runs(Some("sync"), None, None, None, 100)
        .await
        .expect("list");
    assert!(
        listed
            .iter()
            .all(|s| s.detail.as_deref() == Some("maintenance"))
    );

    // A changed calendar holds for what has not fired yet: everything is excluded now.
    let everything = calendar(json!({ "exclude": [ { "kind": "weekdays",
        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] } ] }));
    assert!(matches!(
        store
            .put_calendar(&name("maintenance"), &everything)
            .await
            .expect("put"),
        PutCalendar::Saved { created: false, .. }
    ));
    // The next occurrence comes within the trigger's second: fire until it has been recorded.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (later_fired, later_skipped) = loop {
        store
            .fire_due("a", term, 100, Span::from_millis(0))
            .await
            .expect("fire again");
        let (later_fired, later_skipped) = outcomes(&pool, created.id).await;
        if later_fired.len() + later_skipped.len() > fired.len() + skipped.len() {
            break (later_fired, later_skipped);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no later occurrence was fired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(later_fired, fired, "no task after the change");
    assert!(later_skipped.len() > skipped.len());

    // In use: refused unless forced; includes must exist and may not loop.
    match store
        .delete_calendar("maintenance", false)
        .await
        .expect("delete")
    {
        DeleteCalendar::InUse {
            triggers,
            calendars,
        } => {
            assert!(triggers.is_empty(), "the trigger names holidays only");
            assert_eq!(calendars, ["holidays"]);
        }
        DeleteCalendar::Deleted => panic!("a calendar in use is kept"),
    }
    assert!(matches!(
        store.delete_calendar("holidays", false).await.expect("delete"),
        DeleteCalendar::InUse { ref triggers, .. } if triggers == &[("sync".to_owned(), created.id)]
    ));
    assert!(matches!(
        store
            .put_calendar(&name("maintenance"), &calendar(json!({ "include": ["holidays"] })))
            .await
            .expect("put"),
        PutCalendar::Cycle(chain) if chain == ["maintenance", "holidays", "maintenance"]
    ));
    assert!(matches!(
        store
            .put_calendar(&name("other"), &calendar(json!({ "include": ["nowhere"] })))
            .await
            .expect("put"),
        PutCalendar::MissingIncludes(missing) if missing == ["nowhere"]
    ));
    assert!(matches!(
        store
            .delete_calendar("holidays", true)
            .await
            .expect("forced"),
        DeleteCalendar::Deleted
    ));
    assert!(matches!(
        store.get_calendar("holidays").await,
        Err(pacer_store::Error::NotFound(_))
    ));
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn jittered_tasks_keep_their_occurrence_key_and_are_due_and_claimed_at_their_fire_time(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let work = job(&store, "spread").await;
    let term = lead(&store).await;
    let start = seconds_ago(&store, -2).await;
    let spec =
        trigger(json!({ "kind": "interval", "every": "1s", "start_at": start, "jitter": "20s" }));
    let created = store
        .create_trigger(&work, &spec, Some(start))
        .await
        .expect("trigger");
    store
        .fire_due("a", term, 100, Span::from_secs(5))
        .await
        .expect("fire ahead");
    let rows: Vec<JitteredRow> = sqlx::query_as(
        "select scheduled_at, fire_at, due_at, next_dispatch_at from tasks
             where trigger_id = $1 order by scheduled_at",
    )
    .bind(created.id)
    .fetch_all(&pool)
    .await
    .expect("tasks");
    assert!(rows.len() >= 3, "fired ahead: {}", rows.len());
    for (scheduled, fire_at, due_at, next) in &rows {
        let expected = spec.fire_at(created.id, *scheduled);
        assert!(expected >= *scheduled);
        assert_eq!(
            fire_at.unwrap_or(*scheduled),
            expected,
            "every node computes the same"
        );
        assert_eq!(*due_at, expected, "due at its fire time, never before");
        assert_eq!(next, due_at);
    }
    // Firing again changes nothing: the key is the nominal occurrence.
    store
        .fire_due("a", term, 100, Span::from_secs(5))
        .await
        .expect("again");
    let count: i64 = sqlx::query_scalar("select count(*) from tasks where trigger_id = $1")
        .bind(created.id)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(usize::try_from(count).expect("count"), rows.len());
    // Claimed ahead, a task says when it is meant to go out.
    let claimed = store
        .claim_due("node", 100, Span::from_secs(5), Span::from_secs(60))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), rows.len());
    for task in claimed {
        assert_eq!(task.fire_at, spec.fire_at(created.id, task.scheduled_at));
    }
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_backfill_creates_each_missing_occurrence_once_and_a_repeat_creates_nothing(
    pool: PgPool,
) {
    let store = Store::new(pool.clone());
    let work = job(&store, "nightly").await;
    let now = seconds_ago(&store, 0).await;
    let spec = trigger(
        json!({ "kind": "interval", "every": "1s", "start_at": now - chrono::Duration::seconds(60) }),
    );
    let created = store
        .create_trigger(&work, &spec, Some(now + chrono::Duration::seconds(3600)))
        .await
        .expect("trigger");
    let timetable = spec.timetable().expect("timetable");
    let range = |from: i64, to: i64| {
        timetable
            .between(
                now - chrono::Duration::seconds(from),
                now - chrono::Duration::seconds(to),
                1000,
            )
            .expect("within the cap")
    };
    let first = range(20, 10);
    assert_eq!(first.len(), 10);

    let dry = store
        .backfill(&work, created.id, &first, false, true)
        .await
        .expect("dry run");
    assert_eq!(dry.created.len(), 10);
    assert!(dry.created.iter().all(|(_, id)| id.is_none()));
    let (fired, _) = outcomes(&pool, created.id).await;
    assert!(fired.is_empty(), "a dry run writes nothing");

    let done = store
        .backfill(&work, created.id, &first, false, false)
        .await
        .expect("backfill");
    assert_eq!(
        done.created.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
        first
    );
    assert!(done.existing.is_empty());
    let again = store
        .backfill(&work, created.id, &first, false, false)
        .await
        .expect("repeat");
    assert!(again.created.is_empty(), "a repeat creates nothing");
    assert_eq!(again.existing, first);

    // Overlapping ranges create only what is missing, one after another under `serial`.
    let wider = range(25, 5);
    let overlapping = store
        .backfill(&work, created.id, &wider, true, false)
        .await
        .expect("overlapping");
    assert_eq!(overlapping.created.len(), 10);
    assert_eq!(overlapping.existing, first);
    let chain: Vec<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "select id, waits_for from tasks where trigger_id = $1 and id = any($2) order by scheduled_at",
    )
    .bind(created.id)
    .bind(
        overlapping
            .created
            .iter()
            .filter_map(|(_, id)| id.map(|id| id.as_uuid()))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&pool)
    .await
    .expect("chain");
    assert_eq!(chain[0].1, None);
    for pair in chain.windows(2) {
        assert_eq!(pair[1].1, Some(pair[0].0), "each waits for the one before");
    }
    let origins: Vec<String> =
        sqlx::query_scalar("select distinct origin from tasks where trigger_id = $1")
            .bind(created.id)
            .fetch_all(&pool)
            .await
            .expect("origins");
    assert_eq!(origins, ["backfill"]);
    let (fired, _) = outcomes(&pool, created.id).await;
    assert_eq!(fired, wider, "one task per occurrence of the range");
}

#[sqlx::test(migrator = "pacer_store::MIGRATOR")]
async fn a_backfill_racing_the_trigger_never_doubles_an_occurrence(pool: PgPool) {
    let store = Store::new(pool.clone());
    let work = job(&store, "racing").await;
    let term = lead(&store).await;
    for round in 0..5 {
        let start = seconds_ago(&store, 30).await;
        let spec = trigger(json!({
            "kind": "interval", "every": "1s", "start_at": start,
            "misfire": "catch_up", "misfire_grace": "1m"
        }));
        let created = store
            .create_trigger(&work, &spec, Some(start))
            .await
            .expect("trigger");
        let now = seconds_ago(&store, 0).await;
        let occurrences = spec
            .timetable()
            .expect("timetable")
            .between(start, now, 1000)
            .expect("within the cap");
        let (fired, backfilled) = tokio::join!(
            store.fire_due("a", term, 100, Span::from_millis(0)),
            store.backfill(&work, created.id, &occurrences, false, false),
        );
        fired.expect("fire");
        let backfilled = backfilled.expect("backfill");
        let (tasks, skips) = outcomes(&pool, created.id).await;
        let mut distinct = tasks.clone();
        distinct.dedup();
        assert_eq!(
            distinct, tasks,
            "round {round}: no occurrence has two tasks"
        );
        assert!(skips.is_empty());
        for at in &occurrences {
            assert!(tasks.contains(at), "round {round}: {at} has its task");
        }
        assert_eq!(
            backfilled.created.len() + backfilled.existing.len(),
            occurrences.len()
        );
        let by_origin: Vec<(String, i64)> = sqlx::query_as(
            "select origin, count(*) from tasks where trigger_id = $1 group by origin order by origin",
        )
        .bind(created.id)
        .fetch_all(&pool)
        .await
        .expect("origins");
        let total: i64 = by_origin.iter().map(|(_, n)| n).sum();
        assert_eq!(usize::try_from(total).expect("total"), tasks.len());
    }
}
