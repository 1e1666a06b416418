//! Header manipulation rules of a VirtualService HTTP route (`headers` on
//! the route and on each destination): which names may be set or removed,
//! Envoy's `%VARIABLE%` value syntax, and the single-authority rule.

use crate::networking::virtual_service::{Headers, HttpRoute};
use crate::validation::{Path, Report};

pub(super) fn check_header_operations(h: &Headers, path: &Path, report: &mut Report) {
    if let Some(req) = &h.request {
        let p = path.field("request");
        for (op, map) in [("add", &req.add), ("set", &req.set)] {
            for (name, value) in map {
                let hp = p.field(op).key(name);
                // The request authority may be set (it rewrites Host); other pseudo headers may not.
                if is_internal_header(name) && !is_authority_header(name) {
                    report.error(
                        &hp,
                        format!("invalid header {name:?}: header cannot have \":\" prefix"),
                    );
                }
                check_header_name_and_value(name, Some(value), &hp, report);
            }
        }
        for (i, name) in req.remove.iter().enumerate() {
            check_removable_header(name, None, &p.field("remove").index(i), report);
        }
    }
    if let Some(resp) = &h.response {
        let p = path.field("response");
        for (op, map) in [("add", &resp.add), ("set", &resp.set)] {
            for (name, value) in map {
                check_removable_header(name, Some(value), &p.field(op).key(name), report);
            }
        }
        for (i, name) in resp.remove.iter().enumerate() {
            check_removable_header(name, None, &p.field("remove").index(i), report);
        }
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Istio's `ValidateHTTPHeaderOperationName` (plus the value check): neither
/// Host nor pseudo headers may be touched.
fn check_removable_header(name: &str, value: Option<&String>, path: &Path, report: &mut Report) {
    if name.eq_ignore_ascii_case("host") {
        report.error(path, format!("invalid header {name:?}: cannot set or remove the Host header here; use rewrite.authority"));
    } else if name.starts_with(':') {
        report.error(
            path,
            format!("invalid header {name:?}: header cannot have \":\" prefix"),
        );
    }
    check_header_name_and_value(name, value, path, report);
}

fn check_header_name_and_value(
    name: &str,
    value: Option<&String>,
    path: &Path,
    report: &mut Report,
) {
    if name.is_empty() {
        report.error(path, "header name cannot be empty");
    }
    if let Some(v) = value
        && let Err(e) = check_header_value(v)
    {
        report.error(path, format!("header value {v:?} is invalid: {e}"));
    }
}

/// Envoy's custom header syntax: literal text, `%%` for a percent sign, and
/// `%VARIABLE%` or `%VARIABLE(args)%` substitutions; control characters other
/// than tab are refused.
fn check_header_value(v: &str) -> Result<(), String> {
    if v.chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{7f}')
    {
        return Err("control characters are not allowed".into());
    }
    let bytes = v.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        // A variable: name, optional (args), then the closing '%'.
        let mut j = i + 1;
        while j < bytes.len() && bytes[j] != b'%' && bytes[j] != b'(' {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'(' {
            let mut in_string = false;
            while j < bytes.len() && (in_string || bytes[j] != b')') {
                if bytes[j] == b'"' {
                    in_string = !in_string;
                }
                j += 1;
            }
            j += 1;
            if bytes.get(j) != Some(&b'%') {
                return Err("expected '%' after the variable's arguments".into());
            }
        }
        if j >= bytes.len() {
            return Err("un-escaped '%': write \"%%\" for a literal percent sign".into());
        }
        i = j + 1;
    }
    Ok(())
}

pub(super) fn check_authority_rewrite(route: &HttpRoute, path: &Path, report: &mut Report) {
    let mut current = route
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .filter(|a| !a.is_empty());
    let Some(req) = route.headers.as_ref().and_then(|h| h.request.as_ref()) else {
        return;
    };
    for (op, map) in [("set", &req.set), ("add", &req.add)] {
        for (k, v) in map.iter().filter(|(k, _)| is_authority_header(k)) {
            if let Some(have) = &current {
                report.error(
                    &path.field("headers").field("request").field(op).key(k),
                    format!("authority header cannot be set multiple times: have {have:?}, attempting to set {v:?}"),
                );
                return;
            }
            current = Some(v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    #[test_case("foo", true ; "literal")]
    #[test_case("%HOSTNAME%", true ; "variable")]
    #[test_case("100%%", true ; "escaped")]
    #[test_case("prefix %HOSTNAME% suffix", true ; "embedded")]
    #[test_case("%REQ(x-foo)%", true ; "variable with args")]
    #[test_case("abc%123", false ; "unescaped")]
    #[test_case("%START_TIME%%", false ; "trailing percent")]
    #[test_case("a\nb", false ; "newline")]
    fn header_values(v: &str, ok: bool) {
        assert_eq!(check_header_value(v).is_ok(), ok, "{v:?}");
    }
}
