//! `/logging`: Envoy's live log-level control over `tracing`.
//!
//! `POST /logging?level=debug` sets every logger; `POST
//! /logging?<logger>=<level>` sets one, where a logger is a module of this
//! crate (`xds`, `admin`, `runtime`, `proxy`, ... or a full tracing target
//! such as `mesh_proxy::xds::client`); Envoy's level names (`warning`,
//! `critical`) are accepted. The binary installs a reloadable
//! `EnvFilter` and hands [`LogControl`] the function that swaps it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AdminState;

/// Swaps the active filter for one built from a directive string.
type Apply = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// Why a level change was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// Not one of Envoy's level names.
    #[error("unknown log level {0:?}; use trace, debug, info, warning, error, critical or off")]
    Level(String),
    /// The filter could not be swapped.
    #[error("cannot change the log filter: {0}")]
    Apply(String),
}

/// The current levels and the way to apply them.
#[derive(Clone)]
pub struct LogControl {
    levels: Arc<Mutex<Levels>>,
    apply: Arc<Apply>,
}

#[derive(Clone, Debug)]
struct Levels {
    /// The level of every logger without its own.
    all: String,
    /// Per tracing target.
    loggers: BTreeMap<String, String>,
}

// === impl LogControl ===

impl LogControl {
    /// Levels starting at `initial` (an `EnvFilter` directive string such as
    /// `info` or `info,mesh_proxy::xds=debug`), changed through `apply`.
    pub fn new(
        initial: &str,
        apply: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        let mut levels = Levels {
            all: "info".into(),
            loggers: BTreeMap::new(),
        };
        for directive in initial.split(',').filter(|d| !d.is_empty()) {
            match directive.split_once('=') {
                Some((target, level)) => {
                    levels.loggers.insert(target.into(), level.into());
                }
                None => levels.all = directive.into(),
            }
        }
        Self {
            levels: Arc::new(Mutex::new(levels)),
            apply: Arc::new(apply),
        }
    }

    /// A control that records levels but changes nothing (embedders that
    /// own the subscriber).
    pub fn detached(initial: &str) -> Self {
        Self::new(initial, |_| Ok(()))
    }

    /// Sets every logger to `level`.
    pub fn set_all(&self, level: &str) -> Result<(), LoggingError> {
        let level = normalise(level)?;
        self.change(|l| {
            l.all = level.into();
            l.loggers.clear();
        })
    }

    /// Sets one logger.
    pub fn set_logger(&self, logger: &str, level: &str) -> Result<(), LoggingError> {
        let level = normalise(level)?;
        let target = target(logger);
        self.change(|l| {
            l.loggers.insert(target, level.into());
        })
    }

    /// The directive string in force.
    pub fn directives(&self) -> String {
        self.levels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .directives()
    }

    fn change(&self, f: impl FnOnce(&mut Levels)) -> Result<(), LoggingError> {
        let mut levels = self.levels.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = levels.clone();
        f(&mut next);
        (self.apply)(&next.directives()).map_err(LoggingError::Apply)?;
        *levels = next;
        Ok(())
    }
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("directives", &self.directives())
            .finish()
    }
}

// === impl Levels ===

impl Levels {
    fn directives(&self) -> String {
        std::iter::once(self.all.clone())
            .chain(self.loggers.iter().map(|(t, l)| format!("{t}={l}")))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Envoy's level names to tracing's.
fn normalise(level: &str) -> Result<&'static str, LoggingError> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return Err(LoggingError::Level(level.into())),
    })
}

/// A logger name to a tracing target: a module of this crate, unless it is
/// already a path.
fn target(logger: &str) -> String {
    if logger.contains("::") {
        logger.to_string()
    } else {
        // Envoy's `config` logger is what the xDS client logs here.
        let module = if logger == "config" { "xds" } else { logger };
        format!("mesh_proxy::{module}")
    }
}

pub(super) async fn show(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !query.is_empty() {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "changing log levels requires POST\n",
        )
            .into_response();
    }
    describe(&state.logging).into_response()
}

pub(super) async fn change(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut result = Ok(());
    if let Some(level) = query.get("level") {
        result = state.logging.set_all(level);
    }
    for (logger, level) in query.iter().filter(|(k, _)| *k != "level") {
        if result.is_ok() {
            result = state.logging.set_logger(logger, level);
        }
    }
    match result {
        Ok(()) => {
            tracing::info!(directives = %state.logging.directives(), "log levels changed");
            describe(&state.logging).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

fn describe(control: &LogControl) -> String {
    let levels = control
        .levels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut out = format!("active loggers:\n  all: {}\n", levels.all);
    for (target, level) in &levels.loggers {
        let _ = writeln!(out, "  {target}: {level}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_become_env_filter_directives() {
        let applied = Arc::new(Mutex::new(String::new()));
        let seen = applied.clone();
        let control = LogControl::new("info", move |d| {
            *seen.lock().unwrap() = d.to_string();
            Ok(())
        });
        control.set_logger("xds", "debug").unwrap();
        assert_eq!(*applied.lock().unwrap(), "info,mesh_proxy::xds=debug");
        control.set_all("warning").unwrap();
        assert_eq!(*applied.lock().unwrap(), "warn");
        assert!(control.set_all("loud").is_err());
        assert_eq!(control.directives(), "warn");
    }
}
