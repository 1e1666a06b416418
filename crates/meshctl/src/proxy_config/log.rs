//! `proxy-config log`: show or change a proxy's log levels through
//! Envoy's `/logging` (always POST: Envoy refuses a GET on a mutating
//! endpoint, and a POST without parameters only lists the levels).
//! `--level` takes istioctl's forms: `debug` for every logger, or
//! `name:level[,name:level...]` for some.

use anyhow::bail;

/// Envoy's level names (mesh-proxy maps them onto its own).
const LEVELS: [&str; 7] = [
    "trace", "debug", "info", "warning", "error", "critical", "off",
];

/// The `/logging` requests that apply `level` (one per logger named).
pub fn requests(level: Option<&str>) -> anyhow::Result<Vec<String>> {
    let Some(level) = level else {
        return Ok(vec!["/logging".into()]);
    };
    let mut out = Vec::new();
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (logger, lvl) = match part.split_once(':') {
            Some((logger, lvl)) => (Some(logger), lvl),
            None => (None, part),
        };
        let lvl = lvl.to_ascii_lowercase();
        let lvl = if lvl == "warn" { "warning".into() } else { lvl };
        if !LEVELS.contains(&lvl.as_str()) {
            bail!(
                "--level {part:?}: unknown level {lvl:?}; use one of {}",
                LEVELS.join(", ")
            );
        }
        out.push(match logger {
            Some("") => bail!("--level {part:?}: empty logger name"),
            Some(logger) => format!("/logging?{logger}={lvl}"),
            None => format!("/logging?level={lvl}"),
        });
    }
    if out.is_empty() {
        bail!("--level is empty; give a level (debug) or name:level pairs");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istioctl_level_forms() {
        assert_eq!(requests(None).unwrap(), ["/logging"]);
        assert_eq!(requests(Some("debug")).unwrap(), ["/logging?level=debug"]);
        assert_eq!(
            requests(Some("http:debug,upstream:warn")).unwrap(),
            ["/logging?http=debug", "/logging?upstream=warning"]
        );
        assert!(requests(Some("loud")).is_err());
        assert!(requests(Some(":debug")).is_err());
    }
}
