//! `GET /api/v1/mesh`: the mesh as this node sees it.

use axum::extract::State;
use axum::Json;
use m2m_mesh::{MeshStatus, UplinkStatus};

use crate::error::{ApiError, ErrorBody};
use crate::ApiState;

/// `GET /mesh`
#[utoipa::path(
    get,
    path = "/api/v1/mesh",
    tag = "mesh",
    responses(
        (status = 200, description = "This node, the other nodes it knows (reachable now or not), round \
            trips, whether it has a link of its own to each, QoS 1/2 backlogs waiting for each, their \
            filters, and the mesh counters", body = serde_json::Value),
        (status = 404, description = "This node is not in a mesh", body = ErrorBody),
    )
)]
pub(crate) async fn status(State(state): State<ApiState>) -> Result<Json<MeshStatus>, ApiError> {
    let Some(mesh) = &state.mesh else {
        return Err(ApiError::not_found("this node is not in a mesh (set mesh.listen or mesh.connect)"));
    };
    Ok(Json(mesh.status().await))
}

/// `GET /uplinks`
#[utoipa::path(
    get,
    path = "/api/v1/uplinks",
    tag = "mesh",
    responses(
        (status = 200, description = "The bridges to external MQTT brokers: name, URL, connected, backlog, \
            oldest waiting message's age, messages sent, acknowledged, refused, expired, dropped and \
            received, reconnects, the last error", body = serde_json::Value),
    )
)]
pub(crate) async fn uplinks(State(state): State<ApiState>) -> Json<Vec<UplinkStatus>> {
    Json(state.uplinks.iter().map(m2m_mesh::Uplink::status).collect())
}
