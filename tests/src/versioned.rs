//! A local service with two versions: what a replay is compared against, before and after the
//! developer changes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};

/// The switch between the versions, and a counter of the ids it hands out; cheap to clone.
#[derive(Clone, Default)]
pub struct Versioned {
    changed: Arc<AtomicBool>,
    ids: Arc<AtomicU64>,
}

impl Versioned {
    /// Serves every request with `answer(self, request)` on a random port of 127.0.0.1 and
    /// returns the port (see [`crate::serve_fn`]).
    pub async fn start<F, R>(&self, answer: F) -> u16
    where
        F: Fn(Versioned, Request) -> R + Clone + Send + Sync + 'static,
        R: std::future::Future<Output = Response> + Send + 'static,
    {
        let service = self.clone();
        crate::serve_fn(move |request| answer(service.clone(), request)).await
    }

    /// Switches to the new version.
    pub fn change(&self) {
        self.changed.store(true, Ordering::SeqCst);
    }

    /// Whether the new version answers.
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::SeqCst)
    }

    /// `GET /item`: a JSON item with a fresh `id` each time, its `price` 10, 12 in the new
    /// version.
    pub fn item(&self) -> Response {
        let id = self.ids.fetch_add(1, Ordering::SeqCst);
        let price = if self.changed() { 12 } else { 10 };
        let json = serde_json::json!({ "id": id, "name": "widget", "price": price });
        ([("content-type", "application/json")], json.to_string()).into_response()
    }
}
