//! The operator's console: a single-page app (HTML, JavaScript, CSS, an icon) compiled into the
//! binary and served at `/console/`, with `/` redirecting there.
//!
//! The files are static and carry no data, so they are served without authentication; everything
//! the console shows comes from the API, which checks who is asking. Each answer has a strict
//! Content-Security-Policy (scripts, styles and connections to this origin only, no inline code)
//! and an `ETag`: the names of the files do not change between versions, so they are all served
//! with `Cache-Control: no-cache` and revalidated cheaply (`304 Not Modified`).

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// The console's files; the first is the page itself.
const ASSETS: [Asset; 4] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../console/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../console/favicon.svg"),
    },
];

/// No inline script or style, nothing from another origin (the node often runs without internet),
/// no framing. `img-src data:` is for the canvas charts' exports; `connect-src 'self'` covers the
/// API and its event stream.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'self'; frame-ancestors 'none'";

/// The routes of the console, without state and outside the API's authentication.
pub(crate) fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/console/") }))
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/console/{*name}",
            get(|Path(name): Path<String>, headers: HeaderMap| async move { serve(&name, &headers) }),
        )
}

/// The ETag of each asset (a quoted prefix of its SHA-256), computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// The answer for the file `name`: 200 with the file, 304 when the client's `If-None-Match` names
/// its ETag, 404 for a name that is not one of the files.
fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.name == name) else {
        let mut response = (StatusCode::NOT_FOUND, "no such file in the console").into_response();
        secure(response.headers_mut());
        return response;
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"));
    let mut response =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { asset.body.into_response() };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    }
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(headers);
    response
}

/// The headers every console answer carries.
fn secure(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or_default()
    }

    #[test]
    fn every_file_is_served_with_its_type_a_policy_and_no_cache() {
        for (name, kind) in [
            ("index.html", "text/html"),
            ("app.js", "text/javascript"),
            ("style.css", "text/css"),
            ("favicon.svg", "image/svg+xml"),
        ] {
            let response = serve(name, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK, "{name}");
            assert!(header(&response, header::CONTENT_TYPE).starts_with(kind), "{name}");
            assert_eq!(header(&response, header::CACHE_CONTROL), "no-cache", "{name}");
            assert!(header(&response, header::CONTENT_SECURITY_POLICY).starts_with("default-src 'self'"));
            assert_eq!(header(&response, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
        }
    }

    #[test]
    fn a_known_etag_is_answered_with_not_modified() {
        let first = serve("app.js", &HeaderMap::new());
        let etag = header(&first, header::ETAG).to_owned();
        assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
        let mut request = HeaderMap::new();
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&format!("\"x\", {etag}")).unwrap());
        let again = serve("app.js", &request);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(header(&again, header::ETAG), etag);
        request.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"stale\""));
        assert_eq!(serve("app.js", &request).status(), StatusCode::OK);
    }

    #[test]
    fn an_unknown_file_is_not_found() {
        for name in ["nope.js", "../Cargo.toml", "", "index.html/x"] {
            assert_eq!(serve(name, &HeaderMap::new()).status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }

    #[test]
    fn the_page_loads_no_inline_script_and_nothing_from_elsewhere() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(page.contains(r#"<script type="module" src="app.js"></script>"#));
        assert_eq!(page.matches("<script").count(), 1, "only the one external script");
        assert!(!page.contains("style="), "no inline style (the policy would block it)");
        for asset in &ASSETS {
            let text = String::from_utf8_lossy(asset.body).replace("http://www.w3.org/2000/svg", "");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{} names another origin",
                asset.name
            );
        }
    }
}
