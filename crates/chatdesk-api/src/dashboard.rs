//! The agent dashboard, the embeddable web widget and its demo page: static files compiled into
//! the binary, so they are served by every process, from any directory, and work offline.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

macro_rules! asset {
    ($path:literal, $type:expr, $file:literal) => {
        Asset { path: $path, content_type: $type, body: include_str!(concat!("../../../dashboard/", $file)) }
    };
}

const ASSETS: &[Asset] = &[
    asset!("/", HTML, "index.html"),
    asset!("/system", HTML, "system.html"),
    asset!("/demo", HTML, "demo.html"),
    asset!("/widget.js", JS, "widget.js"),
    asset!("/assets/app.css", CSS, "app.css"),
    asset!("/assets/app.js", JS, "app.js"),
    asset!("/assets/api.js", JS, "api.js"),
    asset!("/assets/connection.js", JS, "connection.js"),
    asset!("/assets/ui.js", JS, "ui.js"),
    asset!("/assets/pages/inbox.js", JS, "pages/inbox.js"),
    asset!("/assets/pages/conversation.js", JS, "pages/conversation.js"),
    asset!("/assets/pages/streams.js", JS, "pages/streams.js"),
];

/// Every asset at its path.
pub fn routes() -> Router<AppState> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move || async move {
                // Small files compiled into the binary: always revalidate, so an upgrade shows at once.
                ([(header::CONTENT_TYPE, asset.content_type), (header::CACHE_CONTROL, "no-cache")], asset.body)
                    .into_response()
            }),
        )
    })
}
