//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` attributes (so it cannot drift from the routes' parameters).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use crate::{clients, devices, groups, history, mesh, node, publish, quarantine, rules};

/// The document's description of the API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "m2m node API",
        description = "Devices, groups, quarantine, the history of messages and the rules of one m2m \
            node. Every route needs `Authorization: Bearer <token>` when the node has an http.token; \
            without one, only clients on loopback are served. Errors are `{\"error\": \"...\"}`."
    ),
    paths(
        history::points,
        history::aggregate,
        history::latest,
        history::topics,
        devices::list,
        devices::create,
        devices::import,
        devices::show,
        devices::change,
        devices::remove,
        groups::list,
        groups::show,
        groups::put,
        groups::remove,
        quarantine::list,
        quarantine::add,
        quarantine::release,
        quarantine::audit,
        quarantine::refusals,
        rules::list,
        rules::create,
        rules::show,
        rules::put,
        rules::remove,
        rules::enable,
        rules::disable,
        rules::test,
        mesh::status,
        mesh::uplinks,
        node::show,
        node::nodes,
        node::config,
        clients::list,
        clients::show,
        clients::disconnect,
        publish::publish,
        document,
    ),
    tags(
        (name = "history", description = "Messages the node kept, their last values and aggregates"),
        (name = "devices", description = "The device registry"),
        (name = "groups", description = "Groups of devices and their access rules"),
        (name = "quarantine", description = "Banned and isolated clients, and the audit log"),
        (name = "rules", description = "Rules: SQL over messages and client events, and their actions"),
        (name = "mesh", description = "This node in a mesh of nodes"),
        (name = "node", description = "This node, the nodes of its mesh, its configuration"),
        (name = "clients", description = "Connected clients and kept sessions; publishing as the node"),
        (name = "meta", description = "This document"),
    )
)]
pub(crate) struct ApiDoc;

/// The document as JSON, built once.
fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_else(|_| "{}".to_owned()))
}

/// `GET /openapi.json`
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "This OpenAPI document", body = serde_json::Value))
)]
pub(crate) async fn document() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_and_lists_the_history_routes() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
        let params = &doc["paths"]["/api/v1/history"]["get"]["parameters"];
        let names: Vec<&str> =
            params.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["filter", "from", "to", "limit", "order", "cursor", "field", "scope"]);
    }
}
