//! The status server: `GET /status` (JSON), `GET /metrics` (Prometheus text)
//! and `GET /` (an HTML page that reloads itself every 2 s).
//!
//! Each request asks the driver for a [`Snapshot`] over its command channel
//! and renders it here, so the node loop only ever copies its tables.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::driver::Command;
use crate::status::Snapshot;

/// How long a request waits for the driver before answering 503.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

type Commands = mpsc::Sender<Command>;

/// The routes, asking the driver behind `commands`.
pub fn router(commands: Commands) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(commands)
}

/// Serves the routes on `listener` until the runtime stops.
pub async fn serve(listener: TcpListener, commands: Commands) -> std::io::Result<()> {
    axum::serve(listener, router(commands)).await
}

async fn snapshot(commands: &Commands) -> Result<Snapshot, Response> {
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "the node is not running\n");
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Snapshot(reply))
        .await
        .map_err(|_| unavailable().into_response())?;
    match tokio::time::timeout(SNAPSHOT_TIMEOUT, answer).await {
        Ok(Ok(s)) => Ok(s),
        _ => Err(unavailable().into_response()),
    }
}

async fn status(State(commands): State<Commands>) -> Response {
    match snapshot(&commands).await {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s.to_json()).into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(commands): State<Commands>) -> Response {
    match snapshot(&commands).await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            s.to_prometheus(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn page(State(commands): State<Commands>) -> Response {
    match snapshot(&commands).await {
        Ok(s) => (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            s.to_html(),
        )
            .into_response(),
        Err(r) => r,
    }
}
