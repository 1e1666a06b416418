//! Trace context on the wire: W3C `traceparent`/`tracestate` and B3, in
//! its single (`b3`) and multi-header (`x-b3-*`) forms.
//!
//! [`extract`] reads what a request carries; [`inject`] writes the
//! context of the span this hop made. Both are pure functions over a
//! header map. A malformed header is never an error and never passed on:
//! it is read as absent, and [`inject`] replaces or removes it.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3`, B3's single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1`: debug, which implies sampled).
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Which B3 form a request carried, so the next hop gets the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum B3Format {
    /// `b3: {trace}-{span}-{sampled}-{parent}`.
    Single,
    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, ...
    Multi,
}

/// The span a request comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    /// Its trace (never 0).
    pub trace_id: u128,
    /// Its span (never 0).
    pub span_id: u64,
}

/// What a request's headers say about its trace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extracted {
    /// The parent span, when a well-formed context came with it.
    pub parent: Option<Parent>,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on only with a valid `traceparent`.
    pub trace_state: Option<HeaderValue>,
    /// The well-formed B3 form it carried, if any.
    pub b3: Option<B3Format>,
}

/// The context injected upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injected<'a> {
    /// The trace.
    pub trace_id: u128,
    /// The span the next hop is a child of.
    pub span_id: u64,
    /// The span that one is a child of (B3's `parentspanid`).
    pub parent_span_id: Option<u64>,
    /// The sampling decision.
    pub sampled: bool,
    /// What was read from the request.
    pub extracted: &'a Extracted,
}

/// Reads the trace context of a request: a valid `traceparent` first (as
/// Envoy's OpenTelemetry tracer), then `b3`, then `x-b3-*`.
pub fn extract(headers: &HeaderMap) -> Extracted {
    let mut out = Extracted::default();
    if let Some((parent, sampled)) = one(headers, &TRACEPARENT).and_then(parse_traceparent) {
        out.parent = Some(parent);
        out.sampled = Some(sampled);
        out.trace_state = headers.get(&TRACESTATE).cloned();
    }
    if let Some(b3) = one(headers, &B3).and_then(parse_b3_single) {
        out.b3 = Some(B3Format::Single);
        if out.parent.is_none() {
            out.parent = b3.0;
            out.sampled = b3.1;
        }
    } else if let Some(b3) = parse_b3_multi(headers) {
        out.b3 = Some(B3Format::Multi);
        if out.parent.is_none() {
            out.parent = b3.0;
            out.sampled = b3.1;
        }
    }
    out
}

/// Writes `ctx` into the request going upstream: `traceparent` always
/// (with `tracestate` when the request had one with a valid parent), and
/// B3 in the form the request carried. Trace headers that were not
/// understood are removed.
pub fn inject(headers: &mut HeaderMap, ctx: &Injected<'_>) {
    let flag = if ctx.sampled { "01" } else { "00" };
    let traceparent = format!("00-{:032x}-{:016x}-{flag}", ctx.trace_id, ctx.span_id);
    if let Ok(v) = HeaderValue::from_str(&traceparent) {
        headers.insert(TRACEPARENT, v);
    }
    match &ctx.extracted.trace_state {
        Some(state) => {
            headers.insert(TRACESTATE, state.clone());
        }
        None => {
            headers.remove(TRACESTATE);
        }
    }
    for name in [
        &B3,
        &B3_TRACE_ID,
        &B3_SPAN_ID,
        &B3_PARENT_SPAN_ID,
        &B3_SAMPLED,
        &B3_FLAGS,
    ] {
        headers.remove(name);
    }
    // A 64-bit trace id keeps its 16-digit B3 form.
    let trace = if ctx.trace_id >> 64 == 0 {
        format!("{:016x}", ctx.trace_id)
    } else {
        format!("{:032x}", ctx.trace_id)
    };
    let span = format!("{:016x}", ctx.span_id);
    let sampled = if ctx.sampled { "1" } else { "0" };
    let mut set = |name: HeaderName, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    };
    match ctx.extracted.b3 {
        None => {}
        Some(B3Format::Single) => {
            let value = match ctx.parent_span_id {
                Some(p) => format!("{trace}-{span}-{sampled}-{p:016x}"),
                None => format!("{trace}-{span}-{sampled}"),
            };
            set(B3, value);
        }
        Some(B3Format::Multi) => {
            set(B3_TRACE_ID, trace);
            set(B3_SPAN_ID, span);
            if let Some(p) = ctx.parent_span_id {
                set(B3_PARENT_SPAN_ID, format!("{p:016x}"));
            }
            set(B3_SAMPLED, sampled.to_string());
        }
    }
}

/// The only value of `name`; a repeated trace header is malformed.
fn one<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok().map(str::trim)
}

/// `{version}-{trace-id}-{parent-id}-{flags}`, lower-case hex, version
/// `00` exactly 55 characters; later versions may append `-...` (W3C
/// Trace Context, level 1). All-zero ids are invalid.
fn parse_traceparent(v: &str) -> Option<(Parent, bool)> {
    let b = v.as_bytes();
    if !v.is_ascii() || b.len() < 55 || !is_lower_hex(&v[..2]) || &v[..2] == "ff" {
        return None;
    }
    if &v[..2] == "00" && b.len() != 55 {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let (trace, span, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !is_lower_hex(trace) || !is_lower_hex(span) || !is_lower_hex(flags) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
    let span_id = u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((Parent { trace_id, span_id }, flags & 1 == 1))
}

/// What a B3 header set says: a parent and/or a sampling decision.
type B3Context = (Option<Parent>, Option<bool>);

/// `b3: {trace}-{span}[-{sampling}[-{parent}]]`, or only `{sampling}`.
fn parse_b3_single(v: &str) -> Option<B3Context> {
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [sampling] => Some((None, Some(b3_sampling(sampling)?))),
        [trace, span, rest @ ..] if rest.len() <= 2 => {
            let parent = b3_ids(trace, span)?;
            let sampled = match rest.first() {
                Some(s) => Some(b3_sampling(s)?),
                None => None,
            };
            if let Some(p) = rest.get(1) {
                b3_span_id(p)?;
            }
            Some((Some(parent), sampled))
        }
        _ => None,
    }
}

/// `x-b3-traceid` + `x-b3-spanid` (both or neither), `x-b3-sampled`,
/// `x-b3-flags: 1` (debug: sampled). `None` when none is there or one is
/// malformed.
fn parse_b3_multi(headers: &HeaderMap) -> Option<B3Context> {
    let trace = headers.get(&B3_TRACE_ID);
    let span = headers.get(&B3_SPAN_ID);
    let sampled = headers.get(&B3_SAMPLED);
    let flags = headers.get(&B3_FLAGS);
    if trace.is_none() && span.is_none() && sampled.is_none() && flags.is_none() {
        return None;
    }
    let parent = match (one(headers, &B3_TRACE_ID), one(headers, &B3_SPAN_ID)) {
        (Some(t), Some(s)) => Some(b3_ids(t, s)?),
        (None, None) if trace.is_none() && span.is_none() => None,
        _ => return None,
    };
    if let Some(p) = headers.get(&B3_PARENT_SPAN_ID) {
        b3_span_id(p.to_str().ok()?.trim())?;
    }
    let mut decision = match sampled.map(|_| one(headers, &B3_SAMPLED)) {
        None => None,
        Some(Some("1" | "true")) => Some(true),
        Some(Some("0" | "false")) => Some(false),
        Some(_) => return None,
    };
    match flags.map(|_| one(headers, &B3_FLAGS)) {
        None | Some(Some("0")) => {}
        Some(Some("1")) => decision = Some(true),
        Some(_) => return None,
    }
    Some((parent, decision))
}

fn b3_ids(trace: &str, span: &str) -> Option<Parent> {
    if !(trace.len() == 16 || trace.len() == 32) || !is_lower_hex(trace) {
        return None;
    }
    let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
    Some(Parent {
        trace_id,
        span_id: b3_span_id(span)?,
    })
}

fn b3_span_id(span: &str) -> Option<u64> {
    if span.len() != 16 || !is_lower_hex(span) {
        return None;
    }
    u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)
}

/// B3 sampling state: `1`, `0`, or `d` (debug, which samples).
fn b3_sampling(s: &str) -> Option<bool> {
    match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_case::test_case;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn traceparent_is_read() {
        let e = extract(&headers(&[("traceparent", TP), ("tracestate", "a=b")]));
        assert_eq!(
            e.parent,
            Some(Parent {
                trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
                span_id: 0x00f067aa0ba902b7
            })
        );
        assert_eq!(e.sampled, Some(true));
        assert_eq!(e.trace_state.as_ref().unwrap(), "a=b");
        assert_eq!(e.b3, None);
    }

    #[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0" ; "short")]
    #[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x" ; "v00 with a tail")]
    #[test_case("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" ; "version ff")]
    #[test_case("00-00000000000000000000000000000000-00f067aa0ba902b7-01" ; "zero trace")]
    #[test_case("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01" ; "zero span")]
    #[test_case("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01" ; "upper case")]
    #[test_case("00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01" ; "separators")]
    #[test_case("00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01" ; "not hex")]
    #[test_case("00-ü4f92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" ; "multibyte")]
    #[test_case("" ; "empty")]
    fn malformed_traceparent_is_absent(v: &str) {
        let e = extract(&headers(&[("traceparent", v), ("tracestate", "a=b")]));
        assert_eq!(e, Extracted::default());
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let v = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra";
        let e = extract(&headers(&[("traceparent", v)]));
        assert_eq!(e.sampled, Some(false));
        assert!(e.parent.is_some());
    }

    #[test]
    fn repeated_traceparent_is_absent() {
        let e = extract(&headers(&[("traceparent", TP), ("traceparent", TP)]));
        assert_eq!(e.parent, None);
    }

    #[test_case("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", Some(true), true ; "full")]
    #[test_case("a3ce929d0e0e4736-00f067aa0ba902b7", None, true ; "64-bit ids, no decision")]
    #[test_case("a3ce929d0e0e4736-00f067aa0ba902b7-d", Some(true), true ; "debug")]
    #[test_case("a3ce929d0e0e4736-00f067aa0ba902b7-0", Some(false), true ; "deny")]
    #[test_case("0", Some(false), false ; "only deny")]
    #[test_case("1", Some(true), false ; "only accept")]
    fn b3_single_is_read(v: &str, sampled: Option<bool>, parent: bool) {
        let e = extract(&headers(&[("b3", v)]));
        assert_eq!(e.b3, Some(B3Format::Single));
        assert_eq!(e.sampled, sampled);
        assert_eq!(e.parent.is_some(), parent);
    }

    #[test_case("x" ; "junk")]
    #[test_case("a3ce929d0e0e4736" ; "no span")]
    #[test_case("a3ce929d0e0e4736-00f067aa0ba902b7-2" ; "bad sampling")]
    #[test_case("a3ce929d0e0e473-00f067aa0ba902b7" ; "odd trace length")]
    #[test_case("a3ce929d0e0e4736-00f067aa0ba902b7-1-xyz" ; "bad parent")]
    #[test_case("a3ce929d0e0e4736-00f067aa0ba902b7-1-00f067aa0ba902b7-9" ; "too many fields")]
    #[test_case("-------" ; "dashes")]
    fn malformed_b3_single_is_absent(v: &str) {
        assert_eq!(extract(&headers(&[("b3", v)])), Extracted::default());
    }

    #[test]
    fn b3_multi_is_read() {
        let e = extract(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-parentspanid", "0000000000000001"),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(e.b3, Some(B3Format::Multi));
        assert_eq!(e.sampled, Some(true));
        assert_eq!(e.parent.unwrap().trace_id, 0xa3ce929d0e0e4736);
        let flags = extract(&headers(&[("x-b3-flags", "1")]));
        assert_eq!((flags.sampled, flags.parent), (Some(true), None));
    }

    #[test_case(&[("x-b3-traceid", "a3ce929d0e0e4736")] ; "trace without span")]
    #[test_case(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "1")] ; "short span")]
    #[test_case(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"), ("x-b3-sampled", "yes")] ; "bad sampled")]
    #[test_case(&[("x-b3-sampled", "1"), ("x-b3-flags", "2")] ; "bad flags")]
    #[test_case(&[("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7"), ("x-b3-parentspanid", "zz")] ; "bad parent")]
    fn malformed_b3_multi_is_absent(pairs: &[(&'static str, &str)]) {
        assert_eq!(extract(&headers(pairs)), Extracted::default());
    }

    #[test]
    fn traceparent_wins_over_b3() {
        let e = extract(&headers(&[
            ("traceparent", TP),
            ("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0"),
        ]));
        assert_eq!(e.sampled, Some(true));
        assert_eq!(
            e.parent.unwrap().trace_id,
            0x4bf92f3577b34da6a3ce929d0e0e4736
        );
        assert_eq!(e.b3, Some(B3Format::Single));
    }

    #[test]
    fn injection_round_trips_in_the_received_format() {
        for b3 in [None, Some(B3Format::Single), Some(B3Format::Multi)] {
            let extracted = Extracted {
                b3,
                trace_state: Some(HeaderValue::from_static("k=v")),
                ..Default::default()
            };
            let mut h = headers(&[("traceparent", "garbage"), ("b3", "junk")]);
            inject(
                &mut h,
                &Injected {
                    trace_id: 0xabc,
                    span_id: 0x1234,
                    parent_span_id: Some(0x99),
                    sampled: true,
                    extracted: &extracted,
                },
            );
            assert_eq!(
                h["traceparent"],
                "00-00000000000000000000000000000abc-0000000000001234-01"
            );
            assert_eq!(h["tracestate"], "k=v");
            let again = extract(&h);
            assert_eq!(again.parent.unwrap().span_id, 0x1234);
            assert_eq!(again.b3, b3);
            match b3 {
                None => assert!(!h.contains_key("b3") && !h.contains_key("x-b3-traceid")),
                Some(B3Format::Single) => {
                    assert_eq!(
                        h["b3"],
                        "0000000000000abc-0000000000001234-1-0000000000000099"
                    );
                }
                Some(B3Format::Multi) => {
                    assert_eq!(h["x-b3-spanid"], "0000000000001234");
                    assert_eq!(h["x-b3-parentspanid"], "0000000000000099");
                    assert_eq!(h["x-b3-sampled"], "1");
                }
            }
        }
    }

    #[test]
    fn an_unsampled_context_is_passed_on_unsampled() {
        let mut h = HeaderMap::new();
        inject(
            &mut h,
            &Injected {
                trace_id: u128::MAX,
                span_id: 1,
                parent_span_id: None,
                sampled: false,
                extracted: &Extracted::default(),
            },
        );
        assert!(h["traceparent"].to_str().unwrap().ends_with("-00"));
        assert!(!h.contains_key("tracestate"));
    }

    proptest::proptest! {
        #[test]
        fn any_header_values_never_panic_and_inject_valid_context(
            tp in "\\PC{0,80}", b3 in "[0-9a-fd-]{0,70}", sampled in "\\PC{0,4}"
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in [("traceparent", &tp), ("b3", &b3), ("x-b3-sampled", &sampled)] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(k, v);
                }
            }
            let e = extract(&h);
            inject(&mut h, &Injected { trace_id: 7, span_id: 9, parent_span_id: None, sampled: true, extracted: &e });
            let again = extract(&h);
            proptest::prop_assert_eq!(again.parent, Some(Parent { trace_id: 7, span_id: 9 }));
            proptest::prop_assert_eq!(again.sampled, Some(true));
        }
    }
}
