//! The agent dashboard, the embeddable web widget and its demo page: static files compiled into
//! the binary, so they are served by every process, from any directory, and work offline.
//!
//! `build.rs` lists every file under `dashboard/` with its URL and content type: adding a page or
//! any other file there is the whole change (a page also goes into `PAGES` in `app.js`).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

/// One file under `dashboard/`.
struct Asset {
    /// The URL it is served at.
    path: &'static str,
    /// Its path under `dashboard/`.
    #[cfg_attr(not(test), expect(dead_code, reason = "only the tests name files"))]
    file: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// The agent app keeps its token in the browser: its page runs only its own scripts, talks only
/// to its own origin and WebSocket gateways, and cannot be framed by another site.
const APP_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// Every asset at its path.
pub fn routes() -> Router<AppState> {
    ASSETS.iter().fold(Router::new(), |router, asset| {
        router.route(
            asset.path,
            get(move || async move {
                let mut response = (
                    [
                        (header::CONTENT_TYPE, asset.content_type),
                        // Small files compiled into the binary: always revalidate, so an upgrade shows at once.
                        (header::CACHE_CONTROL, "no-cache"),
                        // The widget's loader, embedded on customers' sites, imports its modules from
                        // here, and a cross-origin module import needs CORS. Nothing here is private.
                        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                        (header::REFERRER_POLICY, "no-referrer"),
                    ],
                    asset.body,
                )
                    .into_response();
                if asset.path == "/" {
                    let headers = response.headers_mut();
                    headers.insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(APP_POLICY));
                    headers.insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
                }
                response
            }),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(path: &str) -> Option<&'static Asset> {
        ASSETS.iter().find(|asset| asset.path == path)
    }

    fn text(asset: &Asset) -> &'static str {
        std::str::from_utf8(asset.body).unwrap_or_else(|error| panic!("{}: {error}", asset.file))
    }

    /// The specifiers of a module's static and dynamic imports (`from '…'`, `import('…')`).
    fn imports(source: &str) -> Vec<&str> {
        let mut specifiers = Vec::new();
        for opener in ["from '", "import('"] {
            let mut rest = source;
            while let Some(start) = rest.find(opener) {
                rest = &rest[start + opener.len()..];
                let end = rest.find('\'').expect("a closing quote");
                specifiers.push(&rest[..end]);
                rest = &rest[end..];
            }
        }
        specifiers
    }

    /// `specifier` relative to the URL path `importer`, as a browser resolves it.
    fn resolve(importer: &str, specifier: &str) -> String {
        let mut segments: Vec<&str> = importer.split('/').collect();
        segments.pop();
        for segment in specifier.split('/') {
            match segment {
                "." => {}
                ".." => {
                    segments.pop();
                }
                name => segments.push(name),
            }
        }
        segments.join("/")
    }

    #[test]
    fn the_public_addresses_are_served_with_their_types() {
        let expected = [
            ("/", "index.html", "text/html; charset=utf-8"),
            ("/system", "system.html", "text/html; charset=utf-8"),
            ("/demo", "demo.html", "text/html; charset=utf-8"),
            ("/widget.js", "widget.js", "text/javascript; charset=utf-8"),
            ("/assets/app.js", "app.js", "text/javascript; charset=utf-8"),
            ("/assets/app.css", "app.css", "text/css; charset=utf-8"),
        ];
        for (path, file, content_type) in expected {
            let asset = served(path).unwrap_or_else(|| panic!("{path} is not served"));
            assert_eq!((asset.file, asset.content_type), (file, content_type), "{path}");
        }
    }

    #[test]
    fn every_page_listed_in_the_app_is_served() {
        let app = text(served("/assets/app.js").expect("the app is served"));
        let pages: Vec<&str> = imports(app).into_iter().filter(|specifier| specifier.starts_with("./pages/")).collect();
        assert!(pages.len() >= 2, "no page imports found in app.js: {pages:?}");
        for page in pages {
            let path = resolve("/assets/app.js", page);
            assert!(served(&path).is_some(), "app.js lists {page}, but {path} is not served");
        }
    }

    #[test]
    fn every_relative_import_of_every_module_is_served() {
        for asset in ASSETS.iter().filter(|asset| asset.content_type.starts_with("text/javascript")) {
            for specifier in imports(text(asset)) {
                if !specifier.starts_with("./") && !specifier.starts_with("../") {
                    continue;
                }
                let path = resolve(asset.path, specifier);
                assert!(served(&path).is_some(), "{} imports {specifier}, but {path} is not served", asset.file);
            }
        }
    }

    #[test]
    fn the_widget_loader_imports_a_served_module() {
        let loader = text(served("/widget.js").expect("the widget is served"));
        let start =
            loader.find("new URL('").expect("the loader names its module with new URL('…', src)") + "new URL('".len();
        let module = &loader[start..start + loader[start..].find('\'').expect("a closing quote")];
        let path = resolve("/widget.js", module);
        assert!(served(&path).is_some(), "widget.js loads {module}, but {path} is not served");
    }

    #[test]
    fn every_asset_referenced_by_a_page_is_served() {
        for asset in ASSETS.iter().filter(|asset| asset.content_type.starts_with("text/html")) {
            let mut rest = text(asset);
            while let Some(start) = rest.find("\"/assets/") {
                rest = &rest[start + 1..];
                let path = &rest[..rest.find('"').expect("a closing quote")];
                assert!(served(path).is_some(), "{} refers to {path}, which is not served", asset.file);
            }
        }
    }
}
