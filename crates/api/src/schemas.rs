//! Schemas the OpenAPI document spells out by hand, where a derived one would not say what the
//! server accepts: a job's target, one object per kind, an HTTP target still written without a
//! `kind`.

use pacer_domain::OutboundAuth;
use utoipa::ToSchema;
use utoipa::openapi::schema::{
    AdditionalProperties, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr};

/// Where a job's tasks are dispatched (`Target`): which fields each kind takes.
pub(crate) fn target() -> RefOr<Schema> {
    let string = || ObjectBuilder::new().schema_type(Type::String);
    let nullable = |types: [Type; 1]| SchemaType::from_iter(types.into_iter().chain([Type::Null]));
    // A field of the other kind may be sent as null: it counts as absent.
    let null = || {
        ObjectBuilder::new()
            .schema_type(Type::Null)
            .description(Some(
                "Belongs to the other kind of target; null counts as absent.",
            ))
    };
    let headers = || {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(string()))
            .description(Some(
                "Static headers on every dispatch: at most 32, values of visible ASCII.",
            ))
    };
    let url = || {
        ObjectBuilder::new()
            .max_length(Some(2048))
            .pattern(Some(r"^https?://[^/?#\s]+([/?#]\S*)?$"))
    };
    let http = ObjectBuilder::new()
        .title(Some("HttpTarget"))
        .description(Some("An HTTP endpoint taking a `POST` of each task."))
        .property(
            "kind",
            ObjectBuilder::new()
                .schema_type(nullable([Type::String]))
                .enum_values(Some([serde_json::json!("http"), serde_json::Value::Null]))
                .description(Some("Optional for an HTTP target.")),
        )
        .property(
            "url",
            url()
                .schema_type(Type::String)
                .description(Some("An `http` or `https` URL with a host."))
                .examples(["http://registry:8080/sync/masterdata"]),
        )
        .required("url")
        .property("headers", headers())
        .property(
            "auth",
            OneOfBuilder::new()
                .item(Ref::from_schema_name(OutboundAuth::name()))
                .item(ObjectBuilder::new().schema_type(Type::Null))
                .description(Some(
                    "How a dispatch proves it comes from Pacer (default none).",
                )),
        )
        .property(
            "cancel_url",
            url()
                .schema_type(nullable([Type::String]))
                .description(Some(
                    "Where a cancellation is sent (`DELETE`, best effort); `url` when absent. \
                 `{task_id}` in it is replaced by the task's id.",
                )),
        )
        .property("exchange", null())
        .property("routing_key", null())
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let amqp = ObjectBuilder::new()
        .title(Some("AmqpTarget"))
        .description(Some(
            "A RabbitMQ exchange and routing key, with publisher confirms; the cluster needs \
             `amqp.url`. The empty exchange is the broker's default one (the routing key names \
             a queue).",
        ))
        .property("kind", string().enum_values(Some(["amqp"])))
        .required("kind")
        .property(
            "exchange",
            string()
                .max_length(Some(127))
                .pattern(Some(r"^[A-Za-z0-9._:/-]*$"))
                .examples(["pacer.tasks"]),
        )
        .required("exchange")
        .property(
            "routing_key",
            string().max_length(Some(255)).examples(["masterdata.sync"]),
        )
        .required("routing_key")
        .property("headers", headers())
        .property("url", null())
        .property("auth", null())
        .property("cancel_url", null())
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    OneOfBuilder::new()
        .item(http)
        .item(amqp)
        .description(Some(
            "Where a job's tasks are dispatched: an HTTP endpoint (without a `kind`, or with \
             `\"kind\": \"http\"`), or a RabbitMQ exchange (`\"kind\": \"amqp\"`).",
        ))
        .examples([
            serde_json::json!({ "url": "http://registry:8080/sync/masterdata",
                "auth": { "kind": "jwt", "audience": "registry" },
                "cancel_url": "http://registry:8080/sync/{task_id}" }),
            serde_json::json!({ "kind": "amqp", "exchange": "pacer.tasks",
                "routing_key": "masterdata.sync" }),
        ])
        .into()
}
