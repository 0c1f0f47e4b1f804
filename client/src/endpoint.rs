//! Endpoint strings: what a user may type, and the one canonical form the client compares.

use crate::Error;

/// Normalises an endpoint to `http://host:port`.
///
/// Accepts `HOST:PORT` (how `dedupd --listen` and the `leader_address` hint spell it) and
/// `http://HOST:PORT[/]`, with surrounding whitespace. The host is lower-cased so that a hint and
/// a configured endpoint naming the same node compare equal. Refused: an empty string, a
/// missing or invalid port, a path, and `https://` (this client has no TLS).
pub fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let invalid =
        |message: &str| Error::InvalidEndpoint { endpoint: endpoint.to_string(), message: message.to_string() };
    let trimmed = endpoint.trim();
    if trimmed.is_empty() {
        return Err(invalid("empty endpoint"));
    }
    let rest = match trimmed.split_once("://") {
        None => trimmed,
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err(invalid("https is not supported (this client speaks plain HTTP/2); use http:// or HOST:PORT"));
        }
        Some(_) => return Err(invalid("the scheme must be http:// (or none)")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) || authority.chars().any(char::is_whitespace) {
        return Err(invalid("expected HOST:PORT with no path"));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(invalid("missing port: expected HOST:PORT"));
    };
    if host.is_empty() {
        return Err(invalid("missing host: expected HOST:PORT"));
    }
    if host.starts_with('[') != host.ends_with(']') || (!host.starts_with('[') && host.contains(':')) {
        return Err(invalid("an IPv6 host must be in brackets: [::1]:7101"));
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(invalid("the port must be a number in 1..=65535")),
        Ok(_) => {}
    }
    let normalized = format!("http://{}:{port}", host.to_ascii_lowercase());
    // The final word on syntax is tonic's.
    tonic::transport::Endpoint::from_shared(normalized.clone()).map_err(|e| invalid(&e.to_string()))?;
    Ok(normalized)
}

/// Splits a comma-separated endpoint list (`--endpoints`, `DEDUP_ENDPOINTS`), skipping empty
/// items, normalising each, and dropping duplicates (first occurrence kept).
pub fn parse_endpoint_list(list: &str) -> Result<Vec<String>, Error> {
    normalize_all(list.split(',').filter(|item| !item.trim().is_empty()))
}

pub(crate) fn normalize_all<I, S>(endpoints: I) -> Result<Vec<String>, Error>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = Vec::new();
    for endpoint in endpoints {
        let normalized = normalize_endpoint(endpoint.as_ref())?;
        if !out.contains(&normalized) {
            out.push(normalized);
        }
    }
    Ok(out)
}

/// `host:port` of a normalised endpoint, for display.
pub fn display_endpoint(normalized: &str) -> &str {
    normalized.strip_prefix("http://").unwrap_or(normalized)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_forms_users_and_servers_write() {
        for (given, want) in [
            ("127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("  127.0.0.1:7101 ", "http://127.0.0.1:7101"),
            ("http://127.0.0.1:7101", "http://127.0.0.1:7101"),
            ("HTTP://Node-1.Dedup:7101/", "http://node-1.dedup:7101"),
            ("dedup-0.dedup.default.svc:7101", "http://dedup-0.dedup.default.svc:7101"),
            ("[::1]:7101", "http://[::1]:7101"),
        ] {
            assert_eq!(normalize_endpoint(given).unwrap(), want, "{given:?}");
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_dedupd_endpoint() {
        for bad in [
            "",
            "   ",
            "127.0.0.1",
            "127.0.0.1:",
            ":7101",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "127.0.0.1:port",
            "https://127.0.0.1:7101",
            "grpc://127.0.0.1:7101",
            "http://127.0.0.1:7101/ledger",
            "::1:7101",
            "user@host:7101",
        ] {
            let error = normalize_endpoint(bad).expect_err(bad);
            assert_eq!(error.reason(), "INVALID_ENDPOINT", "{bad:?}");
        }
    }

    #[test]
    fn an_endpoint_list_is_split_normalised_and_deduplicated() {
        let list = parse_endpoint_list("127.0.0.1:7101, http://127.0.0.1:7102,,127.0.0.1:7101,").unwrap();
        assert_eq!(list, vec!["http://127.0.0.1:7101", "http://127.0.0.1:7102"]);
        assert!(parse_endpoint_list("127.0.0.1:7101,nope").is_err());
        assert_eq!(parse_endpoint_list("").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn display_drops_the_scheme() {
        assert_eq!(display_endpoint("http://127.0.0.1:7101"), "127.0.0.1:7101");
    }
}
