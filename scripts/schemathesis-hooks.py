"""Hooks for scripts/schemathesis: which refusals of schema-valid requests are expected.

The OpenAPI document says everything about a request that JSON Schema can say: types, ranges,
lengths, patterns, required and nullable fields, one cursor pattern per list. Some rules it
cannot say: a cron expression's grammar, a time zone's name, a duration's range (durations are
strings), one field against another (`end_at` after `start_at`, the body's `idempotency_key`
against the `Idempotency-Key` header), or what the database holds (a trigger that would never
fire). A generated request that breaks only such a rule is rightly refused with a 422 naming
the field; `positive_data_acceptance` would count that refusal as a failure.

So a refusal of a schema-valid request is dropped here only when every field the problem names
is listed below for its operation, with the start of the message the server gives for that
rule. Any other refusal (a field not listed, or a listed field refused for another reason)
still fails the run: the schema must say what the server accepts.

Two more are not refusals of valid data at all, and are dropped too: schemathesis's coverage
phase only makes header values of letters and digits, so for a header whose pattern needs
another character (an event id, `48213-1042`) it sends a value that breaks the pattern (`0`);
and its stateful phase may carry a value it found in a response into a path parameter of
another type (a skip's null `trigger`, as `None`, into a trigger's UUID). Both still count as
valid there; a request whose header or path parameter breaks its documented pattern or format
is not.
"""

import json
import re
from pathlib import Path

import schemathesis

# A duration's range is per field, and a duration is at most 365d; the `Span` schema only says
# what a duration looks like (a refusal of one that looks right quotes it: "`…` is longer …").
SPAN = ("must be between", "must be at least", "must be at most", "`")

# operation -> field -> message prefixes of the rules JSON Schema cannot state.
SEMANTIC = {
    "POST /api/v1/jobs/{name}/tasks": {
        "idempotency_key": ("differs from the Idempotency-Key header",),
        # What the node is configured with: the allowed notice URL prefixes and the secrets.
        "notify.url": ("not under an allowed prefix", "an http or https URL"),
        "notify.events": ("name at least one of",),
        "notify.auth.secret": ("the secret", "a secret name is"),
        "notify.auth.client_secret": ("the secret", "a secret name is"),
        "notify.auth.kind": ("oauth2 is not taken for notices",),
        "notify.auth.audience": ("1 to 256 characters",),
    },
    "POST /api/v1/jobs/{name}/triggers": {
        "expression": ("`", "a cron expression", "the ", "never fires", "has no fire time"),
        "timezone": ("unknown time zone",),
        "every": ("an interval must be at least",) + SPAN,
        "end_at": ("must be after start_at", "is before the trigger's next fire time"),
        "at": ("is before start_at", "is after end_at"),
        "misfire_grace": SPAN,
    },
    "PUT /api/v1/jobs/{name}": {
        # What the cluster is configured with: the fuzzed node has no broker and no secrets.
        "target.kind": ("no RabbitMQ broker is configured",),
        "target.auth.secret": ("no secret named",),
        "target.auth.client_secret": ("no secret named",),
        # An OAuth2 token endpoint's URL like the target's; no control characters in the
        # client id, scope or audience.
        "target.auth.token_url": ("at most 2048", "must be an http", "must name a host", "not a valid URL"),
        "target.auth.client_id": ("1 to 256 characters, no control characters",),
        "target.auth.scope": ("at most 1024 characters, no control characters",),
        "target.auth.audience": ("at most 256 characters, no control characters",),
        # A URL's grammar, and its scheme and host.
        "target.url": ("at most 2048", "must be an http", "must name a host", "not a valid URL"),
        "target.cancel_url": ("at most 2048", "must be an http", "must name a host", "not a valid URL"),
        # One field against another (the default exchange needs a queue's name), and a length
        # in bytes (JSON Schema counts characters).
        "target.routing_key": ("the default exchange routes by queue name", "at most 255 bytes"),
        # Header names are compared without regard to case; values are counted in bytes.
        "target.headers.*": (
            "is set by Pacer on every dispatch",
            "credentials do not belong in static headers",
            "not a valid HTTP header name",
            "a header value is at most 4096",
        ),
        "alerts.on_failure[]": ("no alert sink named",),
        "alerts.on_overdue[]": ("no alert sink named",),
        "alerts.on_success[]": ("no alert sink named",),
        "repoll_interval": SPAN,
        "dispatch_timeout": SPAN,
        "timeout": SPAN,
        "deadline": SPAN,
        "freshness": SPAN,
        "retention": SPAN,
        # What the database holds: the group must have been created first.
        "concurrency_group": ("no concurrency group named",),
        "retry.initial_backoff": SPAN,
        "retry.max_backoff": SPAN,
        # A status or code named twice, or in both lists; a code's characters.
        "retry.on_status[]": ("named twice",),
        "retry.never_on_status[]": ("named twice", "named in both"),
        "retry.on_errors[]": ("named twice", "1 to 128 characters"),
    },
}
# A subscription's URL like a target's, its filters, and the secrets the node is configured with.
SEMANTIC["PUT /api/v1/subscriptions/{name}"] = {
    "url": ("at most 2048", "must be an http", "must name a host", "not a valid URL"),
    "jobs": ("filter by jobs or by labels", "at most 100 jobs"),
    "jobs[]": ("not a job name",),
    "events": ("at most 64 event kinds",),
    "events[]": ("an event kind like",),
    "labels": ("at most 32 labels",),
    "auth.secret": ("no secret named", "a secret name is"),
    "auth.client_secret": ("no secret named", "a secret name is"),
    "auth.token_url": ("at most 2048", "must be an http", "must name a host", "not a valid URL"),
    "auth.client_id": ("1 to 256 characters, no control characters",),
    "auth.scope": ("at most 1024 characters, no control characters",),
    "auth.audience": ("at most 256 characters, no control characters", "1 to 256 characters"),
    "description": ("at most 1000 characters",),
}
# A message's notify is checked as a task's.
SEMANTIC["POST /api/v1/messages"] = {
    field: prefixes
    for field, prefixes in SEMANTIC["POST /api/v1/jobs/{name}/tasks"].items()
    if field.startswith("notify")
}
SEMANTIC["GET /api/v1/events"] = {
    "job": ("at most 100 jobs",),
    "label": ("each label is", "at most 32 labels"),
}
# A trigger's jitter is a duration with its own range, and its calendars must exist.
SEMANTIC["POST /api/v1/jobs/{name}/triggers"]["jitter"] = ("must be between",) + SPAN
SEMANTIC["POST /api/v1/jobs/{name}/triggers"]["calendars[]"] = (
    "no calendar named",
    "a calendar name is",
    "`",
)
SEMANTIC["PUT /api/v1/jobs/{name}/triggers/{id}"] = SEMANTIC["POST /api/v1/jobs/{name}/triggers"]
# A batch refuses each definition as the single route does, under its index.
SEMANTIC["POST /api/v1/jobs/{name}/triggers:batch"] = {
    f"triggers[].{field}": rules
    for field, rules in SEMANTIC["POST /api/v1/jobs/{name}/triggers"].items()
}
# A backfill's range is checked against itself, the database's clock and its cap.
BACKFILL = {
    "to": (
        "must be after `from`",
        "must not be later than now",
        "the range holds more than",
    ),
}
SEMANTIC["POST /api/v1/jobs/{name}/backfill"] = BACKFILL
SEMANTIC["POST /api/v1/jobs/{name}/triggers/{id}/backfill"] = BACKFILL
# A calendar's rules are dates, times and cron expressions read in its time zone (their grammar
# is not JSON Schema's), and what it includes must exist and not include it back.
CALENDAR_RULE_FIELDS = ("date", "from", "to", "days", "expression", "duration", "kind")
SEMANTIC["PUT /api/v1/calendars/{name}"] = {
    "include[]": ("no calendar named", "a calendar name is", "`"),
    "include": ("a calendar may not include itself",),
    "timezone": ("unknown time zone",),
    **{f"exclude[].{field}": ("",) for field in CALENDAR_RULE_FIELDS},
    # A rule is read by its kind, each kind's fields only; the document does not yet close each
    # kind's object to other properties.
    "exclude[]": ("unknown field", "unknown variant", "missing field", "invalid type"),
}
# A job has a target or steps, and what its steps name and reach is checked as for a target.
SEMANTIC["PUT /api/v1/jobs/{name}"]["steps*"] = ("",)
SEMANTIC["PUT /api/v1/jobs/{name}"]["target"] = ("a job has either", "a job needs a `target`")
# Skip if unchanged belongs to a job with a target; a job made of steps sets it on a step.
SEMANTIC["PUT /api/v1/jobs/{name}"]["skip_if_unchanged"] = ("a job made of steps sets",)
# Retrying only what failed is for the run of a job made of steps, and a run's child is retried
# with its run.
SEMANTIC["POST /api/v1/tasks/{id}/retry"] = {
    "only": ("only the run of a job made of steps",),
    "id": ("a child of a run is retried with its run",),
}
# The calendar list's cursor is opaque: only what the API returned decodes.
SEMANTIC["GET /api/v1/calendars"] = {"cursor": ("not a cursor returned by this API",)}

UUID = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"

# operation -> (location, name) -> the pattern its documented schema sets (a `uuid` format as
# one), from the committed document. Header names are compared in lowercase.
_DOCUMENT = json.loads((Path(__file__).resolve().parent.parent / "openapi/openapi.json").read_text())
PATTERNS = {
    f"{method.upper()} {path}": {
        (parameter["in"], parameter["name"].lower() if parameter["in"] == "header" else parameter["name"]):
            parameter["schema"].get("pattern") or UUID
        for parameter in operation.get("parameters", [])
        if parameter.get("in") in ("header", "path")
        and ("pattern" in parameter.get("schema", {}) or parameter.get("schema", {}).get("format") == "uuid")
    }
    for path, methods in _DOCUMENT["paths"].items()
    for method, operation in methods.items()
    if isinstance(operation, dict)
}


def _breaks_a_pattern(operation: str, case) -> bool:
    patterns = PATTERNS.get(operation, {})
    values = [("header", str(k).lower(), v) for k, v in (case.headers or {}).items()]
    values += [("path", k, v) for k, v in (case.path_parameters or {}).items()]
    return any(
        (location, name) in patterns and not re.search(patterns[(location, name)], str(value))
        for location, name, value in values
    )


def _expected(operation: str, errors: list) -> bool:
    rules = SEMANTIC.get(operation, {})
    # `alerts.on_failure[2]` is listed as `alerts.on_failure[]`, `target.headers.X-A` as
    # `target.headers.*`.
    def field(error):
        name = re.sub(r"\[\d+\]", "[]", str(error.get("field")))
        # A job's steps: names that must be unique or name an earlier step, and targets checked
        # as a job's target is; every field under `steps` is listed as `steps*`.
        if name.startswith("steps"):
            return "steps*"
        # A header name may hold any character, a line break too.
        return re.sub(r"^target\.headers\..*$", "target.headers.*", name, flags=re.DOTALL)
    return bool(errors) and all(
        isinstance(error, dict)
        and any(
            str(error.get("message", "")).startswith(prefix)
            for prefix in rules.get(field(error), ())
        )
        for error in errors
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Keeps every failure but a 422 for rules the schema cannot state (see above)."""
    if type(failure).__name__ != "RejectedPositiveData" or response.status_code != 422:
        return True
    if _breaks_a_pattern(case.operation.label, case):
        return False
    try:
        problem = json.loads(response.content)
    except (ValueError, TypeError):
        return True
    return not _expected(case.operation.label, problem.get("errors") or [])
