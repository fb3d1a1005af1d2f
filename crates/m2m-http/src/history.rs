//! `/api/v1/history`, `/history/aggregate`, `/latest` and `/topics`: the messages the node kept.
//!
//! Points are streamed: a blocking thread reads them from the store as the query's iterator is
//! pulled and hands the JSON over in chunks on a bounded channel, so a response of any size takes a
//! few chunks of memory, and a slow client slows the reading down instead of filling memory.
//! Everything that can be wrong with a request is found before the first byte goes out (a 400); a
//! store error after that can no longer change the status: it is logged and the body is cut off
//! (the chunked encoding is not terminated), which the client sees as an incomplete response.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use m2m_history::time::{format_rfc3339, now_us, parse_duration, parse_time};
use m2m_history::{
    Agg, AggregateQuery, Bucket, Cursor, FieldPath, Gap, History, HistoryError, Order, Point, Points, Query,
    TopicInfo, TopicSeries,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::extract::Query as QueryParams;
use crate::{blocking, ApiState};

/// Points returned when a request names no limit.
pub const DEFAULT_LIMIT: usize = 1000;
/// How far before `to` a request without `from` starts.
const DEFAULT_SPAN_US: u64 = 3_600_000_000;
/// Bytes of JSON gathered before they are handed to the connection.
const CHUNK: usize = 64 * 1024;
/// Chunks waiting for the connection at most; the reading thread waits beyond that.
const CHUNKS: usize = 4;

/// The query of `GET /history`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct PointsParams {
    /// Topic filter; `+` and `#` wildcards (percent-encode them: `%2B`, `%23`). `#` does not match
    /// `$SYS/...` topics.
    #[param(required = true, example = "plant/+/temp")]
    filter: Option<String>,
    /// Start of the range, included: RFC 3339, unix seconds, milliseconds or microseconds, `now`,
    /// `now-1h` or `-15m`. Default: an hour before `to`.
    #[param(example = "now-15m")]
    from: Option<String>,
    /// End of the range, excluded (same forms as `from`). Default: now.
    to: Option<String>,
    /// At most this many points (1 to 100000; default 1000).
    limit: Option<String>,
    /// `asc` (oldest first, the default) or `desc`.
    order: Option<String>,
    /// Continue after the last point of a previous page: that page's `next`.
    cursor: Option<String>,
    /// A JSON field of the payload to extract as each point's `value`, e.g. `payload.engine.temp`.
    field: Option<String>,
    /// `node` (this node, the default) or `mesh`: every reachable node answers, the points are
    /// merged in time order (each with its `node`), and `nodes` says who answered. No `cursor`.
    scope: Option<String>,
}

/// The query of `GET /history/aggregate`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AggregateParams {
    /// Topic filter, as for `/history`.
    #[param(required = true)]
    filter: Option<String>,
    /// Start of the range, included (as for `/history`; default an hour before `to`).
    from: Option<String>,
    /// End of the range, excluded (default now).
    to: Option<String>,
    /// The JSON field aggregated, e.g. `payload.temp` (`payload` for a payload that is a number).
    #[param(required = true, example = "payload.temp")]
    field: Option<String>,
    /// Bucket width: `500ms`, `90s`, `15m`, `1h`, `1d` (default `1m`); buckets start at multiples of
    /// it since the unix epoch. At most 100000 buckets.
    bucket: Option<String>,
    /// Comma-separated functions among count, min, max, avg, sum, first, last (default all).
    #[param(example = "avg,max")]
    agg: Option<String>,
}

/// The query of `GET /latest`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LatestParams {
    /// Topic filter (default `#`).
    filter: Option<String>,
    /// A JSON field of the payload to extract as each point's `value`.
    field: Option<String>,
    /// `node` (the default) or `mesh`: the last values of every reachable node, each with its `node`.
    scope: Option<String>,
}

/// The query of `GET /topics`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicsParams {
    /// Topic filter (default `#`).
    filter: Option<String>,
}

/// How a point's `payload` is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Encoding {
    /// The payload is JSON, embedded as it is.
    Json,
    /// UTF-8 text, as a string.
    Text,
    /// Anything else, base64 (standard alphabet, padded).
    Base64,
}

/// One message as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PointView<'a> {
    /// Its topic.
    topic: &'a str,
    /// When the node received it (RFC 3339, UTC, microseconds).
    ts: String,
    /// The same, in microseconds since the unix epoch (unique per topic).
    ts_us: u64,
    /// The publisher's own timestamp, when the node is configured to find one.
    #[serde(skip_serializing_if = "Option::is_none")]
    publisher_ts: Option<String>,
    /// QoS it was published with.
    qos: u8,
    /// Its RETAIN flag.
    retain: bool,
    /// The publisher's client id (absent for the node's own messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    /// MQTT 5 Content Type.
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    /// MQTT 5 User Properties, `[name, value]` pairs in order.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Vec<Vec<String>>)]
    user_properties: &'a [(String, String)],
    /// The payload: a JSON value, a string or base64, as `encoding` says.
    payload: serde_json::Value,
    /// How `payload` is shown.
    encoding: Encoding,
    /// With `field`: the JSON value at that field of the payload, or `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    value: Option<Option<serde_json::Value>>,
}

impl<'a> PointView<'a> {
    pub(crate) fn new(point: &'a Point, field: Option<&FieldPath>) -> Self {
        let r = &point.record;
        let (payload, encoding) = payload(r.content_type.as_deref(), &r.payload);
        Self {
            topic: &point.topic,
            ts: format_rfc3339(point.ts_us),
            ts_us: point.ts_us,
            publisher_ts: r.publisher_ts_us.map(format_rfc3339),
            qos: r.qos,
            retain: r.retain,
            client_id: r.client_id.as_deref(),
            content_type: r.content_type.as_deref(),
            user_properties: &r.user_properties,
            payload,
            encoding,
            value: field.map(|f| f.value(&r.payload)),
        }
    }
}

/// A point as JSON, as the API shows it (for tools that read a store directly and print what the
/// API would).
pub fn point_json(point: &Point, field: Option<&FieldPath>) -> serde_json::Value {
    serde_json::to_value(PointView::new(point, field)).unwrap_or(serde_json::Value::Null)
}

/// The payload as shown: JSON when it parses as JSON (whatever the content type says, unless it is
/// `text/*`, which keeps `1.50` the text it was), else text when it is UTF-8, else base64.
pub(crate) fn payload(content_type: Option<&str>, bytes: &[u8]) -> (serde_json::Value, Encoding) {
    let text_type = content_type.is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/"));
    if !text_type {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            return (value, Encoding::Json);
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => (serde_json::Value::String(text.to_owned()), Encoding::Text),
        Err(_) => (
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            Encoding::Base64,
        ),
    }
}

/// Messages dropped because the node's writer fell behind.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct GapView {
    /// When the first was dropped (RFC 3339).
    from: String,
    /// When the writer caught up (RFC 3339).
    to: String,
    /// How many were dropped.
    dropped: u64,
}

/// A gap as JSON, as the API shows it.
pub fn gap_json(gap: &Gap) -> serde_json::Value {
    serde_json::to_value(GapView::from(gap)).unwrap_or(serde_json::Value::Null)
}

impl From<&Gap> for GapView {
    fn from(g: &Gap) -> Self {
        Self { from: format_rfc3339(g.from_us), to: format_rfc3339(g.to_us), dropped: g.dropped }
    }
}

/// The body of `GET /history` (for the OpenAPI document; it is written as it streams).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PointsPage<'a> {
    /// The points, in time order (then by topic).
    points: Vec<PointView<'a>>,
    /// When the limit stopped the query before the end of the range: the `cursor` of the next page.
    next: Option<String>,
    /// Gaps overlapping the range: messages that were not kept.
    gaps: Vec<GapView>,
}

/// The body of `GET /latest`.
#[derive(Serialize, ToSchema)]
pub(crate) struct LatestValues<'a> {
    /// The last message of each topic, in topic order.
    values: Vec<PointView<'a>>,
}

/// What is known of a topic.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicView {
    /// The topic.
    topic: String,
    /// Messages kept since it was first seen (retention may have deleted older ones since).
    messages: u64,
    /// Its first message (RFC 3339).
    first: String,
    /// Its last message (RFC 3339).
    last: String,
    /// The first message, µs since the unix epoch.
    first_us: u64,
    /// The last message, µs since the unix epoch.
    last_us: u64,
}

impl From<TopicInfo> for TopicView {
    fn from(t: TopicInfo) -> Self {
        Self {
            first: format_rfc3339(t.first_us),
            last: format_rfc3339(t.last_us),
            topic: t.topic,
            messages: t.messages,
            first_us: t.first_us,
            last_us: t.last_us,
        }
    }
}

/// A topic as JSON, as the API shows it.
pub fn topic_json(topic: TopicInfo) -> serde_json::Value {
    serde_json::to_value(TopicView::from(topic)).unwrap_or(serde_json::Value::Null)
}

/// The body of `GET /topics`.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct TopicList {
    /// In topic order.
    topics: Vec<TopicView>,
}

/// One bucket of an aggregate: `start`, `start_us`, `count`, then the functions asked for.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BucketDoc {
    /// Start of the bucket (RFC 3339).
    start: String,
    /// Start of the bucket, µs since the unix epoch.
    start_us: u64,
    /// Points with a numeric value in the bucket.
    count: u64,
    /// Mean (when asked for; likewise `min`, `max`, `sum`, `first`, `last`).
    avg: Option<f64>,
}

/// The aggregates of one topic.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct SeriesDoc {
    /// The topic.
    topic: String,
    /// Points in range whose payload had no numeric value at the field.
    skipped: u64,
    /// Buckets with at least one value, in time order.
    buckets: Vec<BucketDoc>,
}

/// The body of `GET /history/aggregate`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct Aggregates {
    /// One per topic the filter matches, in topic order.
    series: Vec<SeriesDoc>,
}

impl From<HistoryError> for ApiError {
    fn from(error: HistoryError) -> Self {
        match error {
            HistoryError::BadRequest(message) => Self::bad_request(message),
            other => Self::internal("a history query", &other),
        }
    }
}

impl ApiState {
    /// The history, or 404 when the node keeps none.
    fn history(&self) -> Result<History, ApiError> {
        self.history.clone().ok_or_else(|| ApiError::not_found("history is off on this node"))
    }
}

/// `(from, to)` in µs: `to` defaults to now, `from` to an hour before `to`.
fn range(from: Option<&str>, to: Option<&str>) -> Result<(u64, u64), ApiError> {
    let now = now_us();
    let parse =
        |name: &str, s: &str| parse_time(s, now).map_err(|e| ApiError::bad_request(format!("{name}: {e}")));
    let to_us = match to {
        Some(s) => parse("to", s)?,
        None => now,
    };
    let from_us = match from {
        Some(s) => parse("from", s)?,
        None => to_us.saturating_sub(DEFAULT_SPAN_US),
    };
    Ok((from_us, to_us))
}

fn required<'a>(value: &'a Option<String>, name: &str) -> Result<&'a str, ApiError> {
    value.as_deref().ok_or_else(|| ApiError::bad_request(format!("the `{name}` parameter is required")))
}

fn field(value: Option<&str>) -> Result<Option<FieldPath>, ApiError> {
    value.map(|f| FieldPath::parse(f).map_err(ApiError::bad_request)).transpose()
}

/// A `limit`: a number (its range is checked by the query).
fn limit(value: Option<&str>) -> Result<usize, ApiError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(s) => s.trim().parse().map_err(|_| {
            ApiError::bad_request(format!(
                "limit {s:?}: expected a number from 1 to {}",
                m2m_history::MAX_LIMIT
            ))
        }),
    }
}

/// `GET /history`
#[utoipa::path(
    get,
    path = "/api/v1/history",
    tag = "history",
    params(PointsParams),
    responses(
        (status = 200, description = "The points, streamed (chunked). A body that ends before its \
            closing `}` was cut off by an error of the node (logged there).", body = PointsPage<'_>),
        (status = 400, description = "A bad filter, time, range, limit, order, cursor or field", body = ErrorBody),
        (status = 404, description = "History is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn points(
    State(state): State<ApiState>,
    QueryParams(params): QueryParams<PointsParams>,
) -> Result<Response, ApiError> {
    let filter = required(&params.filter, "filter")?.to_owned();
    let (from_us, to_us) = range(params.from.as_deref(), params.to.as_deref())?;
    let order = params.order.as_deref().map(str::parse::<Order>).transpose()?.unwrap_or_default();
    let after = params.cursor.as_deref().map(str::parse::<Cursor>).transpose()?;
    let limit = limit(params.limit.as_deref())?;
    let field_text = params.field.clone();
    let field = field(params.field.as_deref())?;
    if mesh_scope(params.scope.as_deref())? {
        if after.is_some() {
            return Err(ApiError::bad_request(
                "cursor is not supported with scope=mesh: narrow the time range",
            ));
        }
        let desc = order == Order::Desc;
        let asked = serde_json::json!({
            "filter": filter, "from_us": from_us, "to_us": to_us, "limit": limit, "desc": desc, "field": field_text,
        });
        let (mut points, nodes) = ask_mesh(&state, "history", &asked, "points").await?;
        points.sort_by(|a, b| {
            let key = |p: &serde_json::Value| {
                (p["ts_us"].as_u64().unwrap_or(0), p["node"].as_str().unwrap_or("").to_owned())
            };
            if desc {
                key(b).cmp(&key(a))
            } else {
                key(a).cmp(&key(b))
            }
        });
        points.truncate(limit);
        return Ok(axum::Json(serde_json::json!({ "points": points, "nodes": nodes })).into_response());
    }
    let history = state.history()?;
    let query = Query { filter, from_us, to_us, limit, order, after };
    let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS);
    let (started, opened) = oneshot::channel();
    tokio::task::spawn_blocking(move || match history.query(&query) {
        Ok(points) => {
            let _ = started.send(Ok(()));
            let gaps = || history.gaps(from_us, to_us);
            write_points(points, field.as_ref(), gaps, &chunks);
        }
        Err(e) => {
            let _ = started.send(Err(e));
        }
    });
    match opened.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(ApiError::internal("a history query", &Stopped)),
    }
    let stream = tokio_stream::wrappers::ReceiverStream::new(body);
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// The query's thread ended before it said whether the query could start (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the query thread stopped")]
struct Stopped;

/// Writes `{"points":[...],"next":...,"gaps":[...]}` into `chunks` as the points are read. Stops
/// early when the client went away (the channel is closed); on a store error, logs it and sends
/// an error, which cuts the response off.
fn write_points(
    mut points: Points,
    field: Option<&FieldPath>,
    gaps: impl FnOnce() -> Vec<Gap>,
    chunks: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    buf.extend_from_slice(b"{\"points\":[");
    let mut first = true;
    for item in &mut points {
        let point = match item {
            Ok(point) => point,
            Err(e) => {
                tracing::error!(error = %e, "HTTP API: a history query failed while streaming; the response is cut off");
                let _ = chunks.blocking_send(Err(std::io::Error::other("history query failed")));
                return;
            }
        };
        if !first {
            buf.push(b',');
        }
        first = false;
        if let Err(e) = serde_json::to_writer(&mut buf, &PointView::new(&point, field)) {
            tracing::error!(error = %e, "HTTP API: a history point does not serialize; the response is cut off");
            let _ = chunks.blocking_send(Err(std::io::Error::other("history point not serialized")));
            return;
        }
        if buf.len() >= CHUNK {
            let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK + 4096));
            if chunks.blocking_send(Ok(Bytes::from(full))).is_err() {
                return;
            }
        }
    }
    let next = points.next_cursor().map(|c| c.to_string());
    let gaps: Vec<GapView> = gaps().iter().map(GapView::from).collect();
    let tail = format!("],\"next\":{},\"gaps\":{}}}", serde_json::json!(next), serde_json::json!(gaps));
    buf.extend_from_slice(tail.as_bytes());
    let _ = chunks.blocking_send(Ok(Bytes::from(buf)));
}

/// `GET /history/aggregate`
#[utoipa::path(
    get,
    path = "/api/v1/history/aggregate",
    tag = "history",
    params(AggregateParams),
    responses(
        (status = 200, description = "Aggregates per topic and bucket", body = Aggregates),
        (status = 400, description = "A bad filter, time, range, field, bucket or function", body = ErrorBody),
        (status = 404, description = "History is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn aggregate(
    State(state): State<ApiState>,
    QueryParams(params): QueryParams<AggregateParams>,
) -> Result<Response, ApiError> {
    let history = state.history()?;
    let filter = required(&params.filter, "filter")?.to_owned();
    let (from_us, to_us) = range(params.from.as_deref(), params.to.as_deref())?;
    let field = field(Some(required(&params.field, "field")?))?.expect("a field was given");
    let bucket = params.bucket.as_deref().unwrap_or("1m");
    let bucket_us = parse_duration(bucket)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .map_err(|e| ApiError::bad_request(format!("bucket: {e}")))?;
    let aggs = aggs(params.agg.as_deref())?;
    let query = AggregateQuery { filter, from_us, to_us, field, bucket_us };
    let series = blocking(move || Ok(history.aggregate(&query)?)).await?;
    /// The body, serialized as it is (a `json!` value would sort the buckets' keys).
    #[derive(Serialize)]
    struct Body<'a> {
        series: Vec<SeriesView<'a>>,
    }
    let series = series.iter().map(|s| SeriesView::new(s, &aggs)).collect();
    Ok(axum::Json(Body { series }).into_response())
}

/// The functions of an `agg` parameter, in the order given, each once; all by default.
fn aggs(value: Option<&str>) -> Result<Vec<Agg>, ApiError> {
    let Some(value) = value else { return Ok(Agg::ALL.to_vec()) };
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let agg: Agg = name.parse()?;
        if !out.contains(&agg) {
            out.push(agg);
        }
    }
    if out.is_empty() {
        return Err(ApiError::bad_request(
            "agg: name at least one of count, min, max, avg, sum, first, last",
        ));
    }
    Ok(out)
}

/// One topic's aggregates as the API shows them.
#[derive(Serialize)]
struct SeriesView<'a> {
    topic: &'a str,
    skipped: u64,
    buckets: Vec<BucketView<'a>>,
}

/// One bucket: `start`, `start_us`, `count`, then the functions asked for, in that order.
struct BucketView<'a> {
    bucket: &'a Bucket,
    aggs: &'a [Agg],
}

impl Serialize for BucketView<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let b = self.bucket;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("start", &format_rfc3339(b.start_us))?;
        map.serialize_entry("start_us", &b.start_us)?;
        map.serialize_entry("count", &b.count)?;
        for agg in self.aggs.iter().filter(|a| **a != Agg::Count) {
            map.serialize_entry(agg.name(), &b.get(*agg))?;
        }
        map.end()
    }
}

impl<'a> SeriesView<'a> {
    fn new(series: &'a TopicSeries, aggs: &'a [Agg]) -> Self {
        let buckets = series.buckets.iter().map(|bucket| BucketView { bucket, aggs }).collect();
        Self { topic: &series.topic, skipped: series.skipped, buckets }
    }
}

/// One topic's aggregates as JSON, as the API shows them: `count` and the functions of `aggs`.
pub fn series_json(series: &TopicSeries, aggs: &[Agg]) -> serde_json::Value {
    serde_json::to_value(SeriesView::new(series, aggs)).unwrap_or(serde_json::Value::Null)
}

/// `GET /latest`
#[utoipa::path(
    get,
    path = "/api/v1/latest",
    tag = "history",
    params(LatestParams),
    responses(
        (status = 200, description = "The last message of each topic (kept even after the topic's \
            history expired)", body = LatestValues<'_>),
        (status = 400, description = "A bad filter or field", body = ErrorBody),
        (status = 404, description = "History is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn latest(
    State(state): State<ApiState>,
    QueryParams(params): QueryParams<LatestParams>,
) -> Result<Response, ApiError> {
    let filter = params.filter.unwrap_or_else(|| "#".to_owned());
    let field_text = params.field.clone();
    let field = field(params.field.as_deref())?;
    if mesh_scope(params.scope.as_deref())? {
        let asked = serde_json::json!({ "filter": filter, "field": field_text });
        let (mut values, nodes) = ask_mesh(&state, "latest", &asked, "values").await?;
        values.sort_by(|a, b| {
            let key = |p: &serde_json::Value| {
                (p["topic"].as_str().unwrap_or("").to_owned(), p["node"].as_str().unwrap_or("").to_owned())
            };
            key(a).cmp(&key(b))
        });
        return Ok(axum::Json(serde_json::json!({ "values": values, "nodes": nodes })).into_response());
    }
    let history = state.history()?;
    let points: Arc<[Point]> = blocking(move || Ok(history.latest(&filter)?.into())).await?;
    let values = points.iter().map(|p| PointView::new(p, field.as_ref())).collect();
    Ok(axum::Json(LatestValues { values }).into_response())
}

/// Whether `scope` asks for the whole mesh.
fn mesh_scope(scope: Option<&str>) -> Result<bool, ApiError> {
    match scope {
        None | Some("node") => Ok(false),
        Some("mesh") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("scope must be node or mesh, not {other:?}"))),
    }
}

/// How long a mesh query waits for the nodes' answers.
const MESH_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Asks every reachable node; returns the items under `list` of every answer (each with its
/// `node`), and who answered.
async fn ask_mesh(
    state: &ApiState,
    kind: &str,
    asked: &serde_json::Value,
    list: &str,
) -> Result<(Vec<serde_json::Value>, serde_json::Value), ApiError> {
    let Some(mesh) = &state.mesh else {
        return Err(ApiError::not_found(
            "this node is not in a mesh: scope=mesh needs mesh.listen or mesh.connect",
        ));
    };
    let answers = mesh.ask_all(kind, asked, MESH_QUERY_TIMEOUT).await;
    let mut items = Vec::new();
    let mut answered = Vec::new();
    for (node, answer) in answers.answers {
        if let Some(found) = answer.get(list).and_then(serde_json::Value::as_array) {
            for item in found {
                let mut item = item.clone();
                item["node"] = node.clone().into();
                items.push(item);
            }
        }
        answered.push(node);
    }
    answered.sort();
    let failed: Vec<_> = answers
        .errors
        .iter()
        .map(|(node, error)| serde_json::json!({ "node": node, "error": error }))
        .collect();
    let nodes = serde_json::json!({ "answered": answered, "failed": failed, "missing": answers.missing });
    Ok((items, nodes))
}

/// This node's answer to another node's mesh query (`history` or `latest`; parameters as the asking
/// node resolved them).
pub(crate) async fn mesh_answer(
    history: Option<History>,
    kind: String,
    asked: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let history = history.ok_or_else(|| "history is off on this node".to_owned())?;
    let text = |key: &str| asked.get(key).and_then(serde_json::Value::as_str).map(str::to_owned);
    let filter = text("filter").unwrap_or_else(|| "#".to_owned());
    let field = text("field").map(|f| FieldPath::parse(&f)).transpose().map_err(|e| e.to_string())?;
    match kind.as_str() {
        "history" => {
            let number = |key: &str| asked.get(key).and_then(serde_json::Value::as_u64);
            let limit = usize::try_from(number("limit").unwrap_or(1000)).unwrap_or(1000).min(100_000);
            let desc = asked.get("desc").and_then(serde_json::Value::as_bool).unwrap_or(false);
            let query = Query {
                filter,
                from_us: number("from_us").unwrap_or(0),
                to_us: number("to_us").unwrap_or(u64::MAX),
                limit,
                order: if desc { Order::Desc } else { Order::Asc },
                after: None,
            };
            let points = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for point in history.query(&query).map_err(|e| e.to_string())? {
                    out.push(point_json(&point.map_err(|e| e.to_string())?, field.as_ref()));
                }
                Ok::<_, String>(out)
            })
            .await
            .map_err(|e| e.to_string())??;
            Ok(serde_json::json!({ "points": points }))
        }
        "latest" => {
            let points =
                tokio::task::spawn_blocking(move || history.latest(&filter).map_err(|e| e.to_string()))
                    .await
                    .map_err(|e| e.to_string())??;
            let values: Vec<_> = points.iter().map(|p| point_json(p, field.as_ref())).collect();
            Ok(serde_json::json!({ "values": values }))
        }
        other => Err(format!("no mesh query {other:?}")),
    }
}

/// `GET /topics`
#[utoipa::path(
    get,
    path = "/api/v1/topics",
    tag = "history",
    params(TopicsParams),
    responses(
        (status = 200, description = "The topics the node keeps history of", body = TopicList),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 404, description = "History is off on this node", body = ErrorBody),
    )
)]
pub(crate) async fn topics(
    State(state): State<ApiState>,
    QueryParams(params): QueryParams<TopicsParams>,
) -> Result<axum::Json<TopicList>, ApiError> {
    let history = state.history()?;
    let topics = history.topics(params.filter.as_deref().unwrap_or("#"))?;
    Ok(axum::Json(TopicList { topics: topics.into_iter().map(TopicView::from).collect() }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_json_text_or_base64() {
        let cases: [(Option<&str>, &[u8], serde_json::Value, Encoding); 8] = [
            (None, br#"{"t": 1}"#, serde_json::json!({"t": 1}), Encoding::Json),
            (None, b"21.5", serde_json::json!(21.5), Encoding::Json),
            (Some("application/json"), b"[1,2]", serde_json::json!([1, 2]), Encoding::Json),
            (Some("application/vnd.x+json; charset=utf-8"), b"true", serde_json::json!(true), Encoding::Json),
            (Some("text/plain"), b"1.50", serde_json::json!("1.50"), Encoding::Text),
            (None, b"on", serde_json::json!("on"), Encoding::Text),
            (Some("application/json"), b"{not json", serde_json::json!("{not json"), Encoding::Text),
            (None, &[0xff, 0x00, 0x01], serde_json::json!("/wAB"), Encoding::Base64),
        ];
        for (content_type, bytes, value, encoding) in cases {
            assert_eq!(payload(content_type, bytes), (value, encoding), "{content_type:?} {bytes:?}");
        }
    }

    #[test]
    fn aggregate_functions_are_named_once_each_in_order() {
        assert_eq!(aggs(Some("max, avg,max")).unwrap(), [Agg::Max, Agg::Avg]);
        assert_eq!(aggs(None).unwrap(), Agg::ALL);
        assert!(aggs(Some("median")).is_err());
        assert!(aggs(Some(",")).is_err());
    }
}
