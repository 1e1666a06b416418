//! A small in-memory kube-apiserver behind tower-test's mock service, for
//! `kube::Client`: collections answer list requests from recorded fixtures
//! (the last one repeats, so a relist after 410 gets the newer list when
//! two are queued) and watch requests from recorded event streams (a watch
//! with nothing queued hangs, as an idle watch does); single objects are
//! kept in a map with the API server's rules: create of an existing name is
//! 409 AlreadyExists, replace with a stale `resourceVersion` is 409
//! Conflict, get of a missing object is 404. Every request is recorded.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the API server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

/// A one-shot answer to the next request matching `method` and `path`,
/// after storing `store` (another replica's write landing first).
struct Fault {
    method: Method,
    path: String,
    status: u16,
    body: Value,
    store: Option<(String, Value)>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Value>,
    resource_version: u64,
    lists: HashMap<String, VecDeque<String>>,
    watches: HashMap<String, VecDeque<String>>,
    faults: Vec<Fault>,
    seen: Vec<Seen>,
}

/// The fake API server; clone handles share it.
#[derive(Clone, Default)]
pub struct MockApi(Arc<Mutex<Inner>>);

pub fn fixture(name: &str) -> String {
    let path = format!("{}/tests/kube/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl MockApi {
    /// A client talking to this API server.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let api = api.clone();
                tokio::spawn(async move {
                    let (parts, body) = request.into_parts();
                    let bytes = body.collect_bytes().await.unwrap_or_default();
                    let seen = Seen {
                        method: parts.method.clone(),
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().unwrap_or_default().to_string(),
                        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    };
                    let (code, body) = api.answer(seen).await;
                    send.send_response(
                        Response::builder()
                            .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
                            .header("content-type", "application/json")
                            .body(Body::from(body.into_bytes()))
                            .expect("response"),
                    );
                });
            }
        });
        kube::Client::new(service, "default")
    }

    /// Queues a list response (file in tests/kube/) for a collection path.
    pub fn list(&self, path: &str, fixture_name: &str) -> &Self {
        self.lock()
            .lists
            .entry(path.into())
            .or_default()
            .push_back(fixture(fixture_name));
        self
    }

    /// Queues a watch response (newline-delimited events) for a collection path.
    pub fn watch(&self, path: &str, fixture_name: &str) -> &Self {
        self.watch_text(path, fixture(fixture_name))
    }

    pub fn watch_text(&self, path: &str, events: String) -> &Self {
        self.lock()
            .watches
            .entry(path.into())
            .or_default()
            .push_back(events);
        self
    }

    /// Stores an object as if it existed (path of the object).
    pub fn put_object(&self, path: &str, mut object: Value) {
        let mut inner = self.lock();
        inner.resource_version += 1;
        let rv = inner.resource_version.to_string();
        object["metadata"]["resourceVersion"] = json!(rv);
        inner.objects.insert(path.into(), object);
    }

    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// The next `method path` gets `status` with `body`, after `store` is stored.
    pub fn fault(
        &self,
        method: Method,
        path: &str,
        status: u16,
        body: Value,
        store: Option<(&str, Value)>,
    ) {
        self.lock().faults.push(Fault {
            method,
            path: path.into(),
            status,
            body,
            store: store.map(|(p, v)| (p.to_string(), v)),
        });
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// Requests other than lists and watches (what the code wrote or read one by one).
    pub fn calls(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| {
                !(s.method == Method::GET
                    && (s.query.contains("watch=true") || s.query.contains("limit=")))
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn answer(&self, seen: Seen) -> (u16, String) {
        self.lock().seen.push(seen.clone());
        loop {
            if let Some(answer) = self.try_answer(&seen) {
                return match answer.1 {
                    // A watch stream: sent as recorded.
                    Value::String(raw) => (answer.0, raw),
                    other => (answer.0, other.to_string()),
                };
            }
            // A watch with nothing to say: hang until the test queues events.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn try_answer(&self, seen: &Seen) -> Option<(u16, Value)> {
        let mut inner = self.lock();
        if let Some(i) = inner
            .faults
            .iter()
            .position(|f| f.method == seen.method && f.path == seen.path)
        {
            let fault = inner.faults.remove(i);
            if let Some((path, mut object)) = fault.store {
                inner.resource_version += 1;
                object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
                inner.objects.insert(path, object);
            }
            return Some((fault.status, fault.body));
        }
        let path = seen.path.clone();
        match seen.method {
            Method::GET if seen.query.contains("watch=true") => {
                let events = inner.watches.get_mut(&path)?.pop_front()?;
                // The body is the event stream as sent (kept as raw text).
                Some((200, Value::String(events)))
            }
            Method::GET if seen.query.contains("limit=") => {
                let queue = inner.lists.entry(path).or_default();
                let body = if queue.len() > 1 {
                    queue.pop_front()
                } else {
                    queue.front().cloned()
                };
                Some((
                    200,
                    body.map(|b| serde_json::from_str(&b).expect("fixture is JSON"))
                        .unwrap_or_else(|| json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []})),
                ))
            }
            Method::GET => Some(match inner.objects.get(&path) {
                Some(o) => (200, o.clone()),
                None => (404, status(404, "NotFound", &format!("{path} not found"))),
            }),
            Method::POST => {
                let mut object = seen.body.clone();
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let name = if name.is_empty() {
                    format!("generated-{}", inner.resource_version + 1)
                } else {
                    name
                };
                let at = format!("{path}/{name}");
                if inner.objects.contains_key(&at) {
                    return Some((
                        409,
                        status(409, "AlreadyExists", &format!("{name} already exists")),
                    ));
                }
                inner.resource_version += 1;
                object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
                object["metadata"]["uid"] = json!(format!("uid-{}", inner.resource_version));
                inner.objects.insert(at, object.clone());
                Some((201, object))
            }
            Method::PUT => {
                let Some(current) = inner.objects.get(&path) else {
                    return Some((404, status(404, "NotFound", &format!("{path} not found"))));
                };
                if current["metadata"]["resourceVersion"]
                    != seen.body["metadata"]["resourceVersion"]
                {
                    return Some((
                        409,
                        status(
                            409,
                            "Conflict",
                            "Operation cannot be fulfilled: the object has been modified; please apply your changes to the latest version and try again",
                        ),
                    ));
                }
                let mut object = seen.body.clone();
                inner.resource_version += 1;
                object["metadata"]["resourceVersion"] = json!(inner.resource_version.to_string());
                inner.objects.insert(path, object.clone());
                Some((200, object))
            }
            _ => Some((
                405,
                status(405, "MethodNotAllowed", "not supported by the mock"),
            )),
        }
    }
}

/// Waits until `f` holds for the newest snapshot.
pub async fn wait_for<T>(
    rx: &mut tokio::sync::watch::Receiver<Arc<T>>,
    what: &str,
    f: impl Fn(&T) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if f(&rx.borrow_and_update()) {
            return;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for: {what}");
        }
    }
}

/// Waits until `f` holds (fails the test after 15 s).
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
