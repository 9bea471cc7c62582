//! `pacer export`: the current definitions in the format `apply` reads.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::client::{Client, Error, Result, segment};

use super::*;

/// One job as `export` writes it: its name first, its triggers last.
#[derive(Debug, Serialize)]
pub(super) struct Exported {
    pub(super) name: String,
    #[serde(flatten)]
    pub(super) definition: Map<String, Value>,
    pub(super) triggers: Vec<Map<String, Value>>,
}

/// An entry of an exported file: a named resource or a job.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Entry {
    Resource(super::resources::Exported),
    Job(Exported),
}

/// `pacer export`: the named jobs (all when none is named) in the format `apply` reads, after
/// the calendars and concurrency groups they need: every one of the cluster with every job, or
/// those the named jobs and their triggers name (and the calendars those include), so that the
/// output applies on an empty cluster.
pub(crate) async fn export(client: &Client, names: &[String], json: bool) -> Result<String> {
    let jobs = if names.is_empty() {
        client.all_items("/api/v1/jobs", Some(500)).await?
    } else {
        let mut jobs = Vec::new();
        for name in names {
            jobs.push(
                client
                    .get(&format!("/api/v1/jobs/{}", segment(name)), &[])
                    .await?,
            );
        }
        jobs
    };
    let mut exported = Vec::new();
    for job in jobs {
        let name = job
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Unexpected(format!("a job without a name: {job}")))?
            .to_owned();
        let triggers = client
            .all_items(&format!("/api/v1/jobs/{}/triggers", segment(&name)), None)
            .await?;
        exported.push(Exported {
            name,
            definition: job_definition(&job),
            triggers: triggers.iter().map(trigger_definition).collect(),
        });
    }
    let needed: Option<Vec<_>> = (!names.is_empty()).then(|| {
        exported
            .iter()
            .flat_map(|job| super::resources::named_by(&job.definition, &job.triggers))
            .collect()
    });
    let mut document: Vec<Entry> = super::resources::export(client, needed.as_deref())
        .await?
        .into_iter()
        .map(Entry::Resource)
        .collect();
    document.extend(exported.into_iter().map(Entry::Job));
    let exported = document;
    if json {
        let text = serde_json::to_string_pretty(&exported)
            .map_err(|e| Error::Unexpected(format!("cannot write JSON: {e}")))?;
        return Ok(format!("{text}\n"));
    }
    if exported.is_empty() {
        return Ok("[]\n".to_owned());
    }
    serde_saphyr::to_string(&exported)
        .map_err(|e| Error::Unexpected(format!("cannot write YAML: {e}")))
}
