//! The web page at `/`: search a collection with base and tuned results side by side (rank
//! moves highlighted), filter on metadata, judge results and evaluate the judgments, and read
//! the latest pipeline report. Plain HTML, CSS and JavaScript from `api/ui/`, compiled into the
//! binary: the page needs no network beyond this server. It calls the public `/v1` API, with
//! the API key the user types in when reads need one.

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpResponse};

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// Registers the page and its two assets.
pub fn config_ui(cfg: &mut web::ServiceConfig) {
    for (path, body, kind) in [
        ("/", INDEX_HTML, Asset::Html),
        ("/ui/app.js", APP_JS, Asset::Script),
        ("/ui/app.css", APP_CSS, Asset::Style),
    ] {
        cfg.service(
            web::resource(path)
                .route(web::get().to(move || asset(body, kind)))
                .default_service(web::to(super::system::method_not_allowed)),
        );
    }
}

#[derive(Clone, Copy)]
enum Asset {
    Html,
    Script,
    Style,
}

async fn asset(body: &'static str, kind: Asset) -> HttpResponse {
    let content_type = match kind {
        Asset::Html => ContentType::html(),
        Asset::Script => ContentType("text/javascript; charset=utf-8".parse().expect("mime")),
        Asset::Style => ContentType("text/css; charset=utf-8".parse().expect("mime")),
    };
    HttpResponse::Ok()
        .insert_header(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-src 'self'",
        ))
        .body(body)
}
