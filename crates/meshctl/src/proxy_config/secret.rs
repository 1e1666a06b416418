//! `proxy-config secret`: the SDS secrets the proxy holds (warming and
//! active), each with the first certificate of its chain or trust bundle
//! read: CA or leaf, serial, validity. Private keys never reach here:
//! both proxies print them redacted.

use base64::Engine;
use serde_json::Value;

use super::dump::{ConfigDump, array, field, path, str_field};
use super::table::Table;

/// One row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretItem {
    /// Resource name (`default`, `ROOTCA`, a gateway credential).
    pub name: String,
    /// `CA`, `Cert Chain`, or empty when there is no certificate.
    pub kind: String,
    /// `ACTIVE`, `WARMING` or `UNINITIALIZED`.
    pub state: String,
    /// Whether now is within the certificate's validity.
    pub valid: bool,
    /// Serial number, 32 hex digits.
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub not_before: String,
}

/// The secret table (just the header when the proxy holds none).
pub fn table(dump: &ConfigDump) -> Table {
    let mut table = Table::new(
        &[
            "RESOURCE NAME",
            "TYPE",
            "STATUS",
            "VALID CERT",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        5,
    );
    for s in items(dump) {
        table.push(vec![
            s.name,
            s.kind,
            s.state,
            s.valid.to_string(),
            s.serial,
            s.not_after,
            s.not_before,
        ]);
    }
    table
}

/// Warming secrets, then active ones.
pub fn items(dump: &ConfigDump) -> Vec<SecretItem> {
    let Some(secrets) = dump.section("SecretsConfigDump") else {
        return Vec::new();
    };
    let warming = array(secrets, "dynamic_warming_secrets")
        .iter()
        .map(|s| item(s, "WARMING"));
    let active = array(secrets, "dynamic_active_secrets").iter().map(|s| {
        let state = if str_field(s, "version_info") == "uninitialized" {
            "UNINITIALIZED"
        } else {
            "ACTIVE"
        };
        item(s, state)
    });
    warming.chain(active).collect()
}

fn item(dynamic: &Value, state: &str) -> SecretItem {
    let mut out = SecretItem {
        name: str_field(dynamic, "name").into(),
        kind: String::new(),
        state: state.into(),
        valid: false,
        serial: String::new(),
        not_after: String::new(),
        not_before: String::new(),
    };
    let secret = field(dynamic, "secret");
    let pem = secret.and_then(|s| {
        data_source(path(s, &["tls_certificate", "certificate_chain"]))
            .or_else(|| data_source(path(s, &["validation_context", "trusted_ca"])))
    });
    if let Some(meta) = pem.as_deref().and_then(cert_meta) {
        out.kind = meta.kind;
        out.valid = meta.valid;
        out.serial = meta.serial;
        out.not_after = meta.not_after;
        out.not_before = meta.not_before;
    }
    out
}

/// The bytes of an inline `DataSource` (`inline_bytes` is base64 in JSON).
fn data_source(source: Option<&Value>) -> Option<Vec<u8>> {
    let source = source?;
    if let Some(b64) = field(source, "inline_bytes").and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD.decode(b64).ok();
    }
    field(source, "inline_string")
        .and_then(Value::as_str)
        .map(|s| s.as_bytes().to_vec())
}

struct CertMeta {
    kind: String,
    valid: bool,
    serial: String,
    not_after: String,
    not_before: String,
}

/// What istioctl shows of the first certificate in a PEM bundle.
fn cert_meta(pem: &[u8]) -> Option<CertMeta> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let validity = cert.validity();
    Some(CertMeta {
        kind: if cert.is_ca() { "CA" } else { "Cert Chain" }.into(),
        valid: validity.is_valid(),
        serial: serial_hex(cert.tbs_certificate.raw_serial()),
        not_after: rfc3339(&validity.not_after),
        not_before: rfc3339(&validity.not_before),
    })
}

/// The serial as a number in hex, zero-padded to 32 digits (istioctl's
/// `%032x`).
fn serial_hex(raw: &[u8]) -> String {
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let digits = hex.trim_start_matches('0');
    format!("{digits:0>32}")
}

fn rfc3339(t: &x509_parser::time::ASN1Time) -> String {
    let d = t.to_datetime();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        d.year(),
        u8::from(d.month()),
        d.day(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cert(is_ca: bool) -> String {
        let mut params = rcgen::CertificateParams::new(vec!["x.example".into()]).unwrap();
        if is_ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x1f, 0xab]));
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2120, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn secrets_show_their_certificates() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let dump = ConfigDump::from_value(json!({"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "dynamic_active_secrets": [
                {"name": "default", "version_info": "v1", "secret": {
                    "tls_certificate": {
                        "certificate_chain": {"inline_bytes": b64(&cert(false))},
                        "private_key": {"inline_string": "[redacted]"}}}},
                {"name": "ROOTCA", "version_info": "v1", "secret": {
                    "validation_context": {"trusted_ca": {"inline_string": cert(true)}}}}
            ],
            "dynamic_warming_secrets": [{"name": "pending"}]
        }]}))
        .unwrap();
        let items = items(&dump);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].name, "pending");
        assert_eq!(items[0].state, "WARMING");
        assert_eq!(items[1].kind, "Cert Chain");
        assert_eq!(items[1].serial, "00000000000000000000000000001fab");
        assert_eq!(items[1].not_before, "2020-01-02T00:00:00Z");
        assert_eq!(items[1].not_after, "2120-03-04T00:00:00Z");
        assert!(items[1].valid);
        assert_eq!(items[2].kind, "CA");
        let rendered = table(&dump).render();
        assert!(rendered.starts_with("RESOURCE NAME"), "{rendered}");
    }

    #[test]
    fn no_secrets_is_an_empty_table() {
        let dump = ConfigDump::from_value(json!({"configs": []})).unwrap();
        assert_eq!(table(&dump).rows.len(), 0);
    }
}
