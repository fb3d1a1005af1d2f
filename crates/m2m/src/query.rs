//! `m2m query`: the history of a node — points over a time range, the last value of each topic,
//! the topics, and aggregates per time bucket — as a table, JSON, JSON lines or CSV.
//!
//! A running node is asked through its HTTP API (`--api`, or, when its store is in use, its
//! configured `http.listen`, as for `m2m device`); a stopped node's store is opened here and read
//! without writing (retention is not applied). Both ways print the same: points have the shape of
//! the API's (`m2m_http::point_json`).
//!
//! `--all` follows the cursor from page to page (`--limit` points each) and writes each page as it
//! arrives, so an export of any size holds one page in memory.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use m2m_history::time::{now_us, parse_duration, parse_time};
use m2m_history::{Agg, AggregateQuery, Cursor, FieldPath, History, HistoryConfig, Order, Query, Retention};
use m2m_store::{Store, StoreConfig, StoreError};
use serde_json::Value;

use crate::remote::{self, segment, RemoteError};

/// `m2m query ...`
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// Topic filter (`+` and `#` wildcards; `#` leaves out `$SYS/...`). Required for points and
    /// aggregates; `#` by default for --latest and --topics.
    filter: Option<String>,
    /// Start of the range, included: RFC 3339, unix s/ms/µs, `now-1h`, `-15m` (default an hour
    /// before --to).
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End of the range, excluded (default now).
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Points at most (default 1000); with --all, points per page (default 5000).
    #[arg(long)]
    limit: Option<usize>,
    /// Time order.
    #[arg(long, value_enum, default_value_t = OrderArg::Asc)]
    order: OrderArg,
    /// Continue after the last point of an earlier query (the `next` it printed).
    #[arg(long)]
    cursor: Option<String>,
    /// A JSON field of the payload, e.g. `payload.engine.temp`: shown as `value` (aggregated with
    /// --bucket).
    #[arg(long)]
    field: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Every point in the range: follow the cursor page after page, writing each as it arrives.
    #[arg(long, conflicts_with_all = ["latest", "topics", "bucket", "cursor"])]
    all: bool,
    /// The last message of each topic matching the filter (kept even after its history expired).
    #[arg(long, conflicts_with_all = ["topics", "bucket"])]
    latest: bool,
    /// The topics matching the filter, with their message counts and first and last times.
    #[arg(long, conflicts_with = "bucket")]
    topics: bool,
    /// Ask every node of the mesh (through a running node's API): points (or --latest values) of all
    /// nodes merged in time order, each with its node (`node:topic` in the table); who answered is
    /// printed on standard error.
    #[arg(long, conflicts_with_all = ["topics", "bucket", "cursor", "all"])]
    mesh: bool,
    /// Aggregate --field per bucket of this width (`1m`, `15m`, `1h`, `1d`).
    #[arg(long)]
    bucket: Option<String>,
    /// With --bucket: the functions, comma-separated, among count, min, max, avg, sum, first, last
    /// (default all).
    #[arg(long, requires = "bucket")]
    agg: Option<String>,
    /// The HTTP API of a running node, e.g. `http://127.0.0.1:8080`. Without it, the data
    /// directory's store is read, or, when a running node holds it, the node's configured
    /// `http.listen` is asked.
    #[arg(long, env = "M2M_API", value_name = "URL")]
    api: Option<String>,
    /// The API's bearer token (the node's `http.token`); by default the configuration's.
    #[arg(long, env = "M2M_HTTP_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// TOML configuration file (for `node.data_dir`, `[history]`, `http.listen` and `http.token`).
    #[arg(long, env = "M2M_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides node.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    /// Aligned columns, long payloads cut to the terminal's width (`COLUMNS`, else 120).
    Table,
    /// One JSON document, as the API answers.
    Json,
    /// One JSON object per line (a point, a value, a topic or a bucket).
    Jsonl,
    /// CSV with a header line (RFC 4180 quoting).
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OrderArg {
    Asc,
    Desc,
}

impl OrderArg {
    fn name(self) -> &'static str {
        match self {
            OrderArg::Asc => "asc",
            OrderArg::Desc => "desc",
        }
    }
}

/// Points per page of `--all` when `--limit` does not say.
const ALL_PAGE: usize = 5000;

/// Runs `m2m query`.
pub(crate) fn run(args: QueryArgs) -> anyhow::Result<()> {
    if args.bucket.is_some() && args.field.is_none() {
        bail!("--bucket aggregates a field: give it with --field (e.g. --field payload.temp)");
    }
    let source = reach(&args)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = if args.mesh {
        from_mesh(&source, &args, &mut out)
    } else if args.topics {
        topics(&source, &args, &mut out)
    } else if args.latest {
        latest(&source, &args, &mut out)
    } else if args.bucket.is_some() {
        aggregate(&source, &args, &mut out)
    } else {
        points(&source, &args, &mut out)
    };
    let result = result.and_then(|()| out.flush().context("cannot write the output"));
    match result {
        // `m2m query ... | head`: the reader has what it wanted.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Where the history is read.
enum Source {
    /// A stopped node's store, opened here.
    Store(History),
    /// A running node, through its API.
    Api(Api),
}

/// A running node's API, and why it is used.
struct Api {
    client: remote::Client,
    /// When the API is used because the store was found in use (not by `--api`): that, as the
    /// start of the error should the API not serve us either.
    in_use: Option<String>,
}

impl Api {
    fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.client.get(path).map_err(|e| self.explain(e))
    }

    /// The error, with what to do about a refused token, and with the store being in use when the
    /// API was the way around it.
    fn explain(&self, error: RemoteError) -> anyhow::Error {
        let not_served = error.is_not_served();
        let hint = match error.status() {
            Some(401) => Some("give the node's http.token with --token or M2M_HTTP_TOKEN"),
            Some(403) => Some("a node without http.token serves only clients on its own machine"),
            _ => None,
        };
        let error = match hint {
            Some(hint) => anyhow::anyhow!("{error} ({hint})"),
            None => anyhow::Error::new(error),
        };
        match &self.in_use {
            Some(in_use) if not_served => error.context(in_use.clone()),
            _ => error,
        }
    }
}

/// Finds the history: `--api`, else the store of the data directory, else (the store being in use
/// by a running node) the API at the configuration's `http.listen`.
fn reach(args: &QueryArgs) -> anyhow::Result<Source> {
    if let Some(url) = &args.api {
        let client = remote::Client::new(url, args.token.clone())?;
        return Ok(Source::Api(Api { client, in_use: None }));
    }
    let mut overrides = Vec::new();
    if let Some(dir) = &args.data_dir {
        overrides.push(("node.data_dir", toml::Value::String(dir.display().to_string())));
    }
    let file = crate::config::load(args.config.as_deref(), std::env::vars(), &overrides)?;
    let path = file.node.data_dir.join("store");
    if !path.exists() {
        bail!(
            "no store in {} (is this the node's data directory? see --data-dir)",
            file.node.data_dir.display()
        );
    }
    let locked = match Store::open(StoreConfig::new(&path)) {
        Ok((store, _)) => {
            let config = read_only(file.history.config()?.unwrap_or_default());
            let history = History::open(store, config)
                .with_context(|| format!("cannot read the history in {}", path.display()))?;
            return Ok(Source::Store(history));
        }
        Err(StoreError::Locked { .. }) => path,
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open the store in {}", path.display())))
        }
    };
    let in_use = format!(
        "the store in {} is in use by a running node, and the node's HTTP API could not be used instead",
        locked.display()
    );
    let http = &file.http;
    if !http.enabled {
        bail!("{in_use}: the configuration switches it off (http.enabled = false)");
    }
    if http.listen.port() == 0 {
        bail!(
            "{in_use}: http.listen is {}, a port the node picks when it starts; pass --api with the \
             address in the node's log",
            http.listen
        );
    }
    let token = args.token.clone().or_else(|| Some(http.token.clone()).filter(|t| !t.is_empty()));
    let client = remote::Client::for_listen(http.listen, token).with_context(|| in_use.clone())?;
    Ok(Source::Api(Api { client, in_use: Some(in_use) }))
}

/// `config` without any limit: the writer then has nothing to delete, and a stopped node's store
/// is only read (nothing is captured either: no router feeds it).
fn read_only(config: HistoryConfig) -> HistoryConfig {
    HistoryConfig {
        max_age: None,
        max_bytes: None,
        retention: config
            .retention
            .into_iter()
            .map(|r| Retention { filter: r.filter, max_age: None, max_bytes: None })
            .collect(),
        ..config
    }
}

/// A point query, as given on the command line.
struct PointsRequest<'a> {
    filter: &'a str,
    from: Option<&'a str>,
    to: Option<&'a str>,
    limit: usize,
    order: OrderArg,
    field: Option<&'a str>,
}

/// One page of points, the cursor of the next, and the gaps in the range.
struct Page {
    points: Vec<Value>,
    next: Option<String>,
    gaps: Vec<Value>,
}

/// `name=value` pairs as a query string, values percent-encoded.
fn query_string(pairs: &[(&str, Option<&str>)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", segment(v)))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// `--from` and `--to` in µs, for a store read here, with the API's defaults: `to` now, `from` an
/// hour before `to`.
fn range(from: Option<&str>, to: Option<&str>) -> anyhow::Result<(u64, u64)> {
    let now = now_us();
    let time = |name: &str, s: &str| parse_time(s, now).map_err(|e| anyhow::anyhow!("--{name}: {e}"));
    let to_us = to.map(|s| time("to", s)).transpose()?.unwrap_or(now);
    let from_us = from.map(|s| time("from", s)).transpose()?.unwrap_or(to_us.saturating_sub(DEFAULT_SPAN_US));
    Ok((from_us, to_us))
}

/// How far before `--to` a query without `--from` starts (as the API does).
const DEFAULT_SPAN_US: u64 = 3_600_000_000;

fn field_path(field: Option<&str>) -> anyhow::Result<Option<FieldPath>> {
    field.map(|f| FieldPath::parse(f).map_err(|e| anyhow::anyhow!("--field: {e}"))).transpose()
}

impl Source {
    fn page(&self, request: &PointsRequest<'_>, cursor: Option<&str>) -> anyhow::Result<Page> {
        match self {
            Source::Api(api) => {
                let limit = request.limit.to_string();
                let path = format!(
                    "/history{}",
                    query_string(&[
                        ("filter", Some(request.filter)),
                        ("from", request.from),
                        ("to", request.to),
                        ("limit", Some(&limit)),
                        ("order", Some(request.order.name())),
                        ("cursor", cursor),
                        ("field", request.field),
                    ])
                );
                let mut body = api.get(&path)?;
                let take = |v: &mut Value| match v.take() {
                    Value::Array(items) => items,
                    _ => Vec::new(),
                };
                Ok(Page {
                    points: take(&mut body["points"]),
                    next: body["next"].as_str().map(str::to_owned),
                    gaps: take(&mut body["gaps"]),
                })
            }
            Source::Store(history) => {
                let (from_us, to_us) = range(request.from, request.to)?;
                let order = match request.order {
                    OrderArg::Asc => Order::Asc,
                    OrderArg::Desc => Order::Desc,
                };
                let after = cursor.map(str::parse::<Cursor>).transpose()?;
                let query = Query {
                    filter: request.filter.to_owned(),
                    from_us,
                    to_us,
                    limit: request.limit,
                    order,
                    after,
                };
                let field = field_path(request.field)?;
                let mut points = history.query(&query)?;
                let mut out = Vec::new();
                for point in &mut points {
                    out.push(m2m_http::point_json(&point?, field.as_ref()));
                }
                let next = points.next_cursor().map(|c| c.to_string());
                let gaps = history.gaps(from_us, to_us).iter().map(m2m_http::gap_json).collect();
                Ok(Page { points: out, next, gaps })
            }
        }
    }

    fn latest(&self, filter: &str, field: Option<&str>) -> anyhow::Result<Vec<Value>> {
        match self {
            Source::Api(api) => {
                let mut body = api.get(&format!(
                    "/latest{}",
                    query_string(&[("filter", Some(filter)), ("field", field)])
                ))?;
                Ok(body["values"].as_array_mut().map(std::mem::take).unwrap_or_default())
            }
            Source::Store(history) => {
                let field = field_path(field)?;
                Ok(history.latest(filter)?.iter().map(|p| m2m_http::point_json(p, field.as_ref())).collect())
            }
        }
    }

    fn topics(&self, filter: &str) -> anyhow::Result<Vec<Value>> {
        match self {
            Source::Api(api) => {
                let mut body = api.get(&format!("/topics{}", query_string(&[("filter", Some(filter))])))?;
                Ok(body["topics"].as_array_mut().map(std::mem::take).unwrap_or_default())
            }
            Source::Store(history) => {
                Ok(history.topics(filter)?.into_iter().map(m2m_http::topic_json).collect())
            }
        }
    }

    fn aggregate(&self, args: &AggregateArgs<'_>) -> anyhow::Result<Vec<Value>> {
        match self {
            Source::Api(api) => {
                let path = format!(
                    "/history/aggregate{}",
                    query_string(&[
                        ("filter", Some(args.filter)),
                        ("from", args.from),
                        ("to", args.to),
                        ("field", Some(args.field)),
                        ("bucket", Some(args.bucket)),
                        ("agg", args.agg),
                    ])
                );
                let mut body = api.get(&path)?;
                Ok(body["series"].as_array_mut().map(std::mem::take).unwrap_or_default())
            }
            Source::Store(history) => {
                let (from_us, to_us) = range(args.from, args.to)?;
                let aggs = parse_aggs(args.agg)?;
                let bucket_us = parse_duration(args.bucket)
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
                    .map_err(|e| anyhow::anyhow!("--bucket: {e}"))?;
                let query = AggregateQuery {
                    filter: args.filter.to_owned(),
                    from_us,
                    to_us,
                    field: FieldPath::parse(args.field).map_err(|e| anyhow::anyhow!("--field: {e}"))?,
                    bucket_us,
                };
                Ok(history.aggregate(&query)?.iter().map(|s| m2m_http::series_json(s, &aggs)).collect())
            }
        }
    }
}

/// The functions of `--agg` (all by default), each once, in the order given.
fn parse_aggs(agg: Option<&str>) -> anyhow::Result<Vec<Agg>> {
    let Some(agg) = agg else { return Ok(Agg::ALL.to_vec()) };
    let mut out = Vec::new();
    for name in agg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let a: Agg = name.parse().map_err(|e| anyhow::anyhow!("--agg: {e}"))?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    if out.is_empty() {
        bail!("--agg: name at least one of count, min, max, avg, sum, first, last");
    }
    Ok(out)
}

/// The names of the aggregate columns: `count`, then the functions asked for.
fn agg_columns(agg: Option<&str>) -> anyhow::Result<Vec<&'static str>> {
    let mut names = vec!["count"];
    names.extend(parse_aggs(agg)?.into_iter().filter(|a| *a != Agg::Count).map(Agg::name));
    Ok(names)
}

fn filter(args: &QueryArgs) -> anyhow::Result<&str> {
    args.filter
        .as_deref()
        .context("give a topic filter, e.g. `m2m query 'plant/+/temp'` or '#' for every topic")
}

/// `--mesh`: one request with `scope=mesh` to a running node; the answers of every node.
fn from_mesh(source: &Source, args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let Source::Api(api) = source else {
        bail!("--mesh asks a running node's API: the node is not running (start it, or give --api)");
    };
    let limit = args.limit.unwrap_or(m2m_http::DEFAULT_LIMIT).to_string();
    let filter = if args.latest {
        args.filter.clone().unwrap_or_else(|| "#".to_owned())
    } else {
        filter(args)?.to_owned()
    };
    let (path, list) = if args.latest { ("/latest", "values") } else { ("/history", "points") };
    let mut body = api.get(&format!(
        "{path}{}",
        query_string(&[
            ("filter", Some(&filter)),
            ("from", args.from.as_deref().filter(|_| !args.latest)),
            ("to", args.to.as_deref().filter(|_| !args.latest)),
            ("limit", Some(limit.as_str()).filter(|_| !args.latest)),
            ("order", Some(args.order.name()).filter(|_| !args.latest)),
            ("field", args.field.as_deref()),
            ("scope", Some("mesh")),
        ])
    ))?;
    let mut points = body[list].as_array_mut().map(std::mem::take).unwrap_or_default();
    if args.format == Format::Table {
        for p in &mut points {
            let shown = format!("{}:{}", text(&p["node"]), text(&p["topic"]));
            p["topic"] = shown.into();
        }
    }
    let mut printer = PointPrinter::new(args.format, args.field.is_some());
    printer.begin(out)?;
    printer.page(out, &points)?;
    printer.end(out, None, &[])?;
    let nodes = &body["nodes"];
    let names = |v: &Value| {
        let items: Vec<String> = v.as_array().map(|a| a.iter().map(text).collect()).unwrap_or_default();
        if items.is_empty() {
            "-".to_owned()
        } else {
            items.join(", ")
        }
    };
    let failed: Vec<String> = nodes["failed"]
        .as_array()
        .map(|a| a.iter().map(|f| format!("{} ({})", text(&f["node"]), text(&f["error"]))).collect())
        .unwrap_or_default();
    eprintln!(
        "answered: {}; failed: {}; did not answer: {}",
        names(&nodes["answered"]),
        if failed.is_empty() { "-".to_owned() } else { failed.join(", ") },
        names(&nodes["missing"])
    );
    Ok(())
}

fn points(source: &Source, args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let limit = args.limit.unwrap_or(if args.all { ALL_PAGE } else { m2m_http::DEFAULT_LIMIT });
    let request = PointsRequest {
        filter: filter(args)?,
        from: args.from.as_deref(),
        to: args.to.as_deref(),
        limit,
        order: args.order,
        field: args.field.as_deref(),
    };
    let mut printer = PointPrinter::new(args.format, args.field.is_some());
    printer.begin(out)?;
    let mut cursor = args.cursor.clone();
    let mut gaps: Vec<Value> = Vec::new();
    loop {
        let page = source.page(&request, cursor.as_deref())?;
        printer.page(out, &page.points)?;
        for gap in page.gaps {
            if !gaps.contains(&gap) {
                gaps.push(gap);
            }
        }
        cursor = page.next;
        if !args.all || cursor.is_none() {
            break;
        }
    }
    printer.end(out, cursor.as_deref(), &gaps)?;
    if args.format != Format::Json {
        for gap in &gaps {
            eprintln!(
                "warning: {} messages were not kept between {} and {} (the node's history writer fell behind)",
                gap["dropped"], text(&gap["from"]), text(&gap["to"])
            );
        }
        if let Some(next) = &cursor {
            eprintln!("more points in the range: continue with --cursor {next}, or use --all for every one");
        }
    }
    Ok(())
}

fn latest(source: &Source, args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let values = source.latest(args.filter.as_deref().unwrap_or("#"), args.field.as_deref())?;
    if args.format == Format::Json {
        writeln!(out, "{}", serde_json::json!({ "values": values }))?;
        return Ok(());
    }
    let mut printer = PointPrinter::new(args.format, args.field.is_some());
    printer.begin(out)?;
    printer.page(out, &values)?;
    Ok(())
}

fn topics(source: &Source, args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let topics = source.topics(args.filter.as_deref().unwrap_or("#"))?;
    let columns = ["topic", "messages", "first", "last"];
    let rows: Vec<Vec<String>> =
        topics.iter().map(|t| columns.iter().map(|c| text(&t[*c])).collect()).collect();
    match args.format {
        Format::Json => writeln!(out, "{}", serde_json::json!({ "topics": topics }))?,
        Format::Jsonl => {
            for t in &topics {
                writeln!(out, "{t}")?;
            }
        }
        Format::Csv => {
            write_csv(out, &columns.map(String::from))?;
            for row in &rows {
                write_csv(out, row)?;
            }
        }
        Format::Table => write_table(out, &columns, &rows, None)?,
    }
    Ok(())
}

/// An aggregate query, as given on the command line.
struct AggregateArgs<'a> {
    filter: &'a str,
    from: Option<&'a str>,
    to: Option<&'a str>,
    field: &'a str,
    bucket: &'a str,
    agg: Option<&'a str>,
}

fn aggregate(source: &Source, args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let request = AggregateArgs {
        filter: filter(args)?,
        from: args.from.as_deref(),
        to: args.to.as_deref(),
        field: args.field.as_deref().unwrap_or("payload"),
        bucket: args.bucket.as_deref().unwrap_or("1m"),
        agg: args.agg.as_deref(),
    };
    let columns = agg_columns(request.agg)?;
    let series = source.aggregate(&request)?;
    if args.format == Format::Json {
        writeln!(out, "{}", serde_json::json!({ "series": series }))?;
        return Ok(());
    }
    let mut header = vec!["topic", "start"];
    header.extend(&columns);
    let mut rows = Vec::new();
    for s in &series {
        let topic = text(&s["topic"]);
        for b in s["buckets"].as_array().into_iter().flatten() {
            if args.format == Format::Jsonl {
                let mut line = serde_json::Map::new();
                line.insert("topic".into(), s["topic"].clone());
                if let Some(fields) = b.as_object() {
                    line.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                writeln!(out, "{}", Value::Object(line))?;
                continue;
            }
            let mut row = vec![topic.clone(), text(&b["start"])];
            row.extend(columns.iter().map(|c| text(&b[*c])));
            rows.push(row);
        }
        if s["skipped"].as_u64().is_some_and(|n| n > 0) {
            eprintln!("note: {topic}: {} points had no number at {}", s["skipped"], request.field);
        }
    }
    match args.format {
        Format::Csv => {
            write_csv(out, &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
            for row in &rows {
                write_csv(out, row)?;
            }
        }
        Format::Table => write_table(out, &header, &rows, None)?,
        Format::Json | Format::Jsonl => {}
    }
    Ok(())
}

/// A JSON value as one cell: strings without quotes, `null` empty, anything else as compact JSON.
fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A point's payload as text: JSON as compact JSON, text as it is, base64 as base64.
fn payload_text(point: &Value) -> String {
    match point["encoding"].as_str() {
        Some("json") => point["payload"].to_string(),
        _ => text(&point["payload"]),
    }
}

/// Writes points in one format, page after page.
struct PointPrinter {
    format: Format,
    /// Points carry a `value` (a field was asked for).
    field: bool,
    /// Points written so far.
    written: u64,
    /// Column widths of the table, fixed by the first page.
    widths: Option<Vec<usize>>,
}

impl PointPrinter {
    fn new(format: Format, field: bool) -> Self {
        Self { format, field, written: 0, widths: None }
    }

    fn begin(&mut self, out: &mut dyn Write) -> anyhow::Result<()> {
        match self.format {
            Format::Json => write!(out, "{{\"points\":[")?,
            Format::Csv => {
                let mut header: Vec<String> =
                    ["ts", "topic", "client_id", "qos", "payload"].map(String::from).to_vec();
                if self.field {
                    header.push("value".into());
                }
                write_csv(out, &header)?;
            }
            Format::Jsonl | Format::Table => {}
        }
        Ok(())
    }

    fn page(&mut self, out: &mut dyn Write, points: &[Value]) -> anyhow::Result<()> {
        match self.format {
            Format::Json => {
                for p in points {
                    if self.written > 0 {
                        out.write_all(b",")?;
                    }
                    write!(out, "{p}")?;
                    self.written += 1;
                }
            }
            Format::Jsonl => {
                for p in points {
                    writeln!(out, "{p}")?;
                }
            }
            Format::Csv => {
                for p in points {
                    let mut row = vec![
                        text(&p["ts"]),
                        text(&p["topic"]),
                        text(&p["client_id"]),
                        text(&p["qos"]),
                        payload_text(p),
                    ];
                    if self.field {
                        row.push(text(&p["value"]));
                    }
                    write_csv(out, &row)?;
                }
            }
            Format::Table => {
                let last = if self.field { "value" } else { "payload" };
                let header = ["time", "topic", "client", last];
                let rows: Vec<Vec<String>> = points
                    .iter()
                    .map(|p| {
                        let shown = if self.field { text(&p["value"]) } else { payload_text(p) };
                        vec![text(&p["ts"]), text(&p["topic"]), text(&p["client_id"]), shown]
                    })
                    .collect();
                let first = self.widths.is_none();
                let widths = self.widths.get_or_insert_with(|| widths(&header, &rows));
                write_table(out, if first { &header[..] } else { &[] }, &rows, Some(widths))?;
            }
        }
        Ok(())
    }

    fn end(&mut self, out: &mut dyn Write, next: Option<&str>, gaps: &[Value]) -> anyhow::Result<()> {
        if self.format == Format::Json {
            writeln!(out, "],\"next\":{},\"gaps\":{}}}", serde_json::json!(next), Value::from(gaps))?;
        }
        Ok(())
    }
}

/// Column widths (in characters) fitting `header` and `rows`.
fn widths(header: &[&str], rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    widths
}

/// The terminal's width: `COLUMNS`, else 120.
fn terminal_width() -> usize {
    std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()).filter(|&c| c >= 40).unwrap_or(120)
}

/// `cell` on one line (control characters as spaces), cut to `max` characters with a `…`.
fn fit(cell: &str, max: usize) -> String {
    let one_line: String = cell.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Writes a table: `header` (when not empty) and `rows`, columns two spaces apart, padded to
/// `widths` (by default, those of this header and these rows); the last column is cut to fit the
/// terminal.
fn write_table(
    out: &mut dyn Write,
    header: &[&str],
    rows: &[Vec<String>],
    widths: Option<&[usize]>,
) -> anyhow::Result<()> {
    let own;
    let widths = match widths {
        Some(w) => w,
        None => {
            own = self::widths(header, rows);
            &own
        }
    };
    let before: usize = widths.iter().rev().skip(1).map(|w| w + 2).sum();
    let last_max = terminal_width().saturating_sub(before).max(20);
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let cells: Vec<&str> = cells.collect();
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                line.push_str(&fit(cell, last_max));
            } else {
                let cell = fit(cell, widths[i].max(1));
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(&cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        line.trim_end().to_owned()
    };
    if !header.is_empty() {
        writeln!(
            out,
            "{}",
            line(
                &mut header
                    .iter()
                    .map(|h| h.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
            )
        )?;
    }
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// Writes one CSV record (RFC 4180): a field with a comma, a quote, a line break or surrounding
/// spaces is quoted, its quotes doubled; lines end with CRLF.
fn write_csv(out: &mut dyn Write, fields: &[String]) -> anyhow::Result<()> {
    let mut line = String::new();
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        let quote = f.contains([',', '"', '\n', '\r']) || f.starts_with(' ') || f.ends_with(' ');
        if quote {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        } else {
            line.push_str(f);
        }
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_they_must_be() {
        let mut out = Vec::new();
        let fields = ["plain", "a,b", "say \"hi\"", "two\nlines", " pad", ""].map(String::from);
        write_csv(&mut out, &fields).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\" pad\",\r\n"
        );
    }

    #[test]
    fn long_cells_are_cut_to_one_line() {
        assert_eq!(fit("abc", 5), "abc");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("a\nb", 5), "a b");
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            query_string(&[("filter", Some("a/+/#")), ("cursor", None), ("from", Some("now-1h"))]),
            "?filter=a%2F%2B%2F%23&from=now-1h"
        );
        assert_eq!(query_string(&[("cursor", None)]), "");
    }

    #[test]
    fn aggregate_columns_start_with_the_count() {
        assert_eq!(agg_columns(Some("avg,max,count")).unwrap(), ["count", "avg", "max"]);
        assert_eq!(agg_columns(None).unwrap(), ["count", "min", "max", "avg", "sum", "first", "last"]);
        assert!(agg_columns(Some("median")).is_err());
    }
}
