//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of the API, generated from the handlers'
//! `#[utoipa::path]` attributes (so it cannot drift from the routes' parameters).

use std::sync::OnceLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;

use crate::{
    clients, devices, groups, history, live, mesh, metrics, node, operators, publish, quarantine, rules,
};

/// The document's description of the API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "m2m node API",
        description = "Devices, groups, quarantine, the history of messages, the rules and the \
            operators of one m2m node. A caller is a console session (cookie `m2m_session` from \
            POST /api/v1/login; changes need its CSRF token in `X-CSRF-Token`), a bearer token \
            (`Authorization: Bearer <token>`), or a non-browser client on loopback when the node \
            trusts it. Roles: viewer reads, operator changes, admin manages users and tokens. \
            Errors are `{\"error\": \"<code>\", \"message\": \"...\"}`."
    ),
    paths(
        operators::login,
        operators::logout,
        operators::me,
        operators::change_password,
        operators::list_users,
        operators::add_user,
        operators::change_user,
        operators::remove_user,
        operators::list_tokens,
        operators::create_token,
        operators::revoke_token,
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
        live::stream,
        metrics::exposition,
        live::rates,
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
        (name = "operators", description = "Logging in, users and API tokens"),
        (name = "live", description = "Live events and rates, for the console"),
        (name = "metrics", description = "Prometheus metrics"),
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

/// `GET /openapi.json` (also served at `/api/openapi.json`)
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

    /// Every `(method, path)` the router in lib.rs declares, read from its source: each
    /// `.route("path", get(..).post(..))` call.
    fn declared_routes() -> Vec<(String, String)> {
        let source = include_str!("lib.rs");
        let mut routes = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = rest[at + ".route(".len()..].trim_start();
            let Some(quoted) = rest.strip_prefix('"') else { continue };
            rest = quoted;
            let Some(end) = rest.find('"') else { break };
            let path = rest[..end].to_owned();
            // The call's arguments end at the parenthesis that closes `.route(`.
            let mut depth = 1;
            let mut close = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            close = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let call = &rest[end..close];
            for method in ["get", "post", "put", "patch", "delete"] {
                let direct = [
                    format!("({method}("),
                    format!(" {method}("),
                    format!(".{method}("),
                    format!("::{method}("),
                ];
                if direct.iter().any(|d| call.contains(d.as_str())) {
                    routes.push((method.to_owned(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_of_the_router_is_in_the_document() {
        let doc: serde_json::Value = serde_json::from_str(json()).unwrap();
        let routes = declared_routes();
        assert!(routes.len() > 40, "the route parser found too few routes: {routes:?}");
        for (method, path) in routes {
            // Two ids that are also fixed routes (`/rules/test`, `/devices/import`) answer their
            // other methods as `/rules/{id}` and `/devices/{id}` do; the document is at two paths.
            let documented_as = match (method.as_str(), path.as_str()) {
                (m, "/api/v1/rules/test") if m != "post" => "/api/v1/rules/{id}",
                (m, "/api/v1/devices/import") if m != "post" => "/api/v1/devices/{id}",
                (_, "/api/openapi.json") => "/api/v1/openapi.json",
                (_, p) => p,
            };
            assert!(
                doc["paths"][documented_as][&method].is_object(),
                "{} {path} is not in the OpenAPI document",
                method.to_uppercase()
            );
        }
    }

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
