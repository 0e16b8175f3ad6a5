//! The page: one HTML file and one script, compiled into the binary (the speaker may have no
//! Internet, and nothing is fetched from elsewhere). No framework: a few hundred lines of plain
//! JavaScript on `fetch` and `EventSource`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::Response;

use super::api::Body;

pub const INDEX_HTML: &str = include_str!("assets/index.html");
pub const APP_JS: &str = include_str!("assets/app.js");

/// What the browser may do with the page: only our own script, no frames (clickjacking), no
/// connections anywhere but here.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub fn page() -> Response<Body> {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

pub fn script() -> Response<Body> {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// Page weight: what a first visit downloads.
pub fn page_weight() -> usize {
    INDEX_HTML.len() + APP_JS.len()
}
