//! The one route table: every path, its methods and handlers, and what a
//! caller needs to reach it. The server registers its routes from it, the
//! token middleware looks up a route's access in it ([`access_of`]), a `405`
//! names its methods in `Allow` from it, and the tests compare it with the
//! OpenAPI document ([`listed`]).
//!
//! go-crablet's routes are one scope, [`GO_CRABLET`], mounted only when
//! `compat.go_crablet` is on (a path under it is otherwise no route: 404).

use actix_web::{web, HttpRequest, HttpResponse};

use super::{append, browser, gocrablet, import, operations, project, read, subscribe, ApiError};
use crate::auth::Scope;
use crate::config::CompatSettings;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Served to anyone: health probes, the API description and the event
    /// browser's page and assets (the page asks for a token when the API
    /// answers 401).
    Open,
    /// A valid token with this scope (or `admin`).
    Needs(Scope),
}

/// A method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    fn route(self) -> actix_web::Route {
        match self {
            Method::Get => web::get(),
            Method::Post => web::post(),
        }
    }
}

/// One method of a route and the handler it goes to.
pub struct Endpoint {
    pub method: Method,
    /// Attaches the handler to the method's route (`|r| r.to(handler)`).
    to: fn(actix_web::Route) -> actix_web::Route,
}

const fn get(to: fn(actix_web::Route) -> actix_web::Route) -> Endpoint {
    Endpoint {
        method: Method::Get,
        to,
    }
}

const fn post(to: fn(actix_web::Route) -> actix_web::Route) -> Endpoint {
    Endpoint {
        method: Method::Post,
        to,
    }
}

/// A path, what reaching it needs, and its endpoints.
pub struct Route {
    pub path: &'static str,
    pub access: Access,
    pub endpoints: &'static [Endpoint],
    /// Responses are compressed when the client asks (`/metrics`: the
    /// exposition compresses about tenfold, and Prometheus asks).
    compressed: bool,
}

const fn route(path: &'static str, access: Access, endpoints: &'static [Endpoint]) -> Route {
    Route {
        path,
        access,
        endpoints,
        compressed: false,
    }
}

/// The same route, its responses compressed when the client asks.
const fn compressed(route: Route) -> Route {
    Route {
        compressed: true,
        ..route
    }
}

/// Routes mounted together under one prefix (each route's path includes it).
pub struct Mount {
    pub prefix: &'static str,
    pub routes: &'static [Route],
}

use Access::{Needs, Open};

/// crablet's own API, the event browser and the operator's routes.
#[rustfmt::skip]
pub const NATIVE: &[Route] = &[
    route("/append", Needs(Scope::Append), &[post(|r| r.to(append::append))]),
    route("/project", Needs(Scope::Read), &[post(|r| r.to(project::project))]),
    route("/read", Needs(Scope::Read), &[get(|r| r.to(read::read_get)), post(|r| r.to(read::read_post))]),
    route("/subscribe", Needs(Scope::Read), &[get(|r| r.to(subscribe::subscribe_get)), post(|r| r.to(subscribe::subscribe_post))]),
    route("/head", Needs(Scope::Read), &[get(|r| r.to(read::head))]),
    // Writes an exported log at its own positions.
    route("/admin/import", Needs(Scope::Admin), &[post(|r| r.to(import::import))]),
    route("/", Open, &[get(|r| r.to(browser::index))]),
    route("/static/app.js", Open, &[get(|r| r.to(browser::script))]),
    route("/static/style.css", Open, &[get(|r| r.to(browser::style))]),
    route("/health", Open, &[get(|r| r.to(operations::health))]),
    route("/health/live", Open, &[get(|r| r.to(operations::live))]),
    // Open when `auth.metrics_requires_token = false`.
    compressed(route("/metrics", Needs(Scope::Metrics), &[get(|r| r.to(operations::metrics))])),
    route("/openapi.json", Open, &[get(|r| r.to(operations::openapi))]),
];

/// go-crablet's web-app contract ([`gocrablet`]): the same scopes as the
/// native routes each maps to.
#[rustfmt::skip]
pub const GO_CRABLET: Mount = Mount {
    prefix: "/go-crablet",
    routes: &[
        route("/go-crablet/health", Open, &[get(|r| r.to(gocrablet::health))]),
        route("/go-crablet/append", Needs(Scope::Append), &[post(|r| r.to(gocrablet::append))]),
        route("/go-crablet/read", Needs(Scope::Read), &[post(|r| r.to(gocrablet::read))]),
        route("/go-crablet/project", Needs(Scope::Read), &[post(|r| r.to(gocrablet::project))]),
        // Appends a synthetic data set.
        route("/go-crablet/load-test-data", Needs(Scope::Append), &[post(|r| r.to(gocrablet::load_test_data))]),
        // Deletes every event (and only when the configuration allows it).
        route("/go-crablet/cleanup", Needs(Scope::Admin), &[post(|r| r.to(gocrablet::cleanup))]),
    ],
};

/// Every route: the native ones, then go-crablet's.
fn every_route() -> impl Iterator<Item = &'static Route> {
    NATIVE.iter().chain(GO_CRABLET.routes)
}

/// Every route's path and its methods, for the tests that compare them with
/// the OpenAPI document and probe each.
pub fn listed() -> Vec<(&'static str, Vec<&'static str>)> {
    every_route()
        .map(|route| {
            let methods = route.endpoints.iter().map(|e| e.method.as_str()).collect();
            (route.path, methods)
        })
        .collect()
}

/// What a matched route pattern needs; a route missing from the table needs
/// `admin` (closed, never open, by mistake).
pub fn access_of(pattern: &str) -> Access {
    every_route()
        .find(|route| route.path == pattern)
        .map_or(Needs(Scope::Admin), |route| route.access)
}

/// Registers every route (go-crablet's scope only when `compat.go_crablet`
/// is on) and the 404 for any other path.
pub fn register(compat: &CompatSettings) -> impl FnOnce(&mut web::ServiceConfig) + '_ {
    move |cfg| {
        for route in NATIVE {
            add(cfg, route.path, route);
        }
        if compat.go_crablet {
            cfg.service(web::scope(GO_CRABLET.prefix).configure(|scope| {
                for route in GO_CRABLET.routes {
                    let path = route.path.strip_prefix(GO_CRABLET.prefix);
                    add(
                        scope,
                        path.expect("a mounted route starts with its prefix"),
                        route,
                    );
                }
            }));
        }
        cfg.default_service(web::to(not_found));
    }
}

/// One route, at `path` within its scope: its endpoints, and a 405 naming
/// them for any other method.
fn add(cfg: &mut web::ServiceConfig, path: &str, route: &'static Route) {
    let allow: Vec<&str> = route.endpoints.iter().map(|e| e.method.as_str()).collect();
    let allow = allow.join(", ");
    let mut resource = web::resource(path).default_service(web::to(move || {
        let allow = allow.clone();
        async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) }
    }));
    for endpoint in route.endpoints {
        resource = resource.route((endpoint.to)(endpoint.method.route()));
    }
    if route.compressed {
        cfg.service(resource.wrap(actix_web::middleware::Compress::default()));
    } else {
        cfg.service(resource);
    }
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "{} {}",
        req.method(),
        req.path()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_listed_once() {
        let mut paths: Vec<&str> = listed().into_iter().map(|(path, _)| path).collect();
        let count = paths.len();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), count, "a path is listed twice");
    }

    #[test]
    fn a_route_outside_the_table_needs_admin() {
        assert_eq!(access_of("/nowhere"), Needs(Scope::Admin));
        assert_eq!(access_of("/append"), Needs(Scope::Append));
        assert_eq!(access_of("/go-crablet/cleanup"), Needs(Scope::Admin));
        assert_eq!(access_of("/admin/import"), Needs(Scope::Admin));
        assert_eq!(access_of("/go-crablet/read"), Needs(Scope::Read));
        assert_eq!(access_of("/health"), Open);
    }
}
