//! Gateway addresses as users write them: `http://host:port`, `https://host:port`, or
//! `dns:///host:port` (every address the name resolves to), several of them comma-separated.
//!
//! Parsing is strict and says what is wrong: a typo here would otherwise surface as a
//! connection error far from its cause.

use std::fmt;

use tonic::transport::Uri;

use crate::ClientError;

/// One gateway address as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One gateway at a URL (`http://` plaintext, `https://` TLS), kept as given.
    Url {
        url: String,
        /// The host, for TLS server-name checks.
        host: String,
        tls: bool,
    },
    /// Every address `host` resolves to, on `port`, looked up again from time to time.
    Dns { host: String, port: u16 },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Url { url, .. } => f.write_str(url),
            Target::Dns { host, port } => write!(f, "dns:///{}", authority(host, *port)),
        }
    }
}

impl Target {
    pub(crate) fn needs_tls(&self) -> bool {
        matches!(self, Target::Url { tls: true, .. })
    }
}

/// `host:port`, bracketing an IPv6 literal.
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Parses every address of `addrs`; each entry may itself be a comma-separated list. Blank
/// entries are skipped and duplicates dropped; no address at all is an error.
pub fn parse_targets<S: AsRef<str>>(addrs: &[S]) -> Result<Vec<Target>, ClientError> {
    let mut targets = Vec::new();
    for entry in addrs.iter().flat_map(|a| a.as_ref().split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let target = parse_target(entry)?;
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    if targets.is_empty() {
        return Err(ClientError::NoAddress);
    }
    Ok(targets)
}

/// Parses one address.
pub fn parse_target(text: &str) -> Result<Target, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: text.to_owned(),
        reason: reason.to_owned(),
    };
    if let Some(rest) = text.strip_prefix("dns:") {
        // gRPC's naming: dns:[//dns-server/]host[:port]. A DNS server of our own choosing is
        // not something the system resolver can do, so only the empty authority is accepted.
        let Some(name) = rest.strip_prefix("///") else {
            return Err(invalid(
                "expected dns:///HOST:PORT (a DNS server in the address is not supported)",
            ));
        };
        let (host, port) = split_host_port(name).map_err(|reason| invalid(&reason))?;
        return Ok(Target::Dns { host, port });
    }
    let Some((scheme, _)) = text.split_once("://") else {
        return Err(invalid(
            "missing scheme: expected http://HOST:PORT, https://HOST:PORT or dns:///HOST:PORT",
        ));
    };
    let tls = match scheme {
        "http" => false,
        "https" => true,
        _ => {
            return Err(invalid(
                "unknown scheme: expected http://, https:// or dns:///",
            ));
        }
    };
    let uri: Uri = text
        .parse()
        .map_err(|err| invalid(&format!("not a URL ({err})")))?;
    let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
        return Err(invalid("no host"));
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        // The gRPC method is the path: a path prefix here would be silently dropped.
        return Err(invalid("a gateway address has no path"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid("user info in the address is not supported"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(Target::Url {
        url: text.trim_end_matches('/').to_owned(),
        host,
        tls,
    })
}

/// `host:port` or `[v6]:port`; the port is required (there is no default gRPC port).
fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed [ in an IPv6 address".to_owned())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "missing :PORT".to_owned())?;
        (host, port)
    } else {
        text.rsplit_once(':')
            .ok_or_else(|| "missing :PORT".to_owned())?
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.contains(['/', '?', '#', '@', ' ']) || (!text.starts_with('[') && host.contains(':')) {
        return Err(format!("invalid host {host:?}"));
    }
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn url(url: &str, host: &str, tls: bool) -> Target {
        Target::Url {
            url: url.into(),
            host: host.into(),
            tls,
        }
    }

    #[test]
    fn one_plain_address() {
        assert_eq!(
            parse_targets(&["http://127.0.0.1:50051"]).unwrap(),
            vec![url("http://127.0.0.1:50051", "127.0.0.1", false)]
        );
    }

    #[test]
    fn lists_split_on_commas_trim_and_drop_duplicates() {
        let targets =
            parse_targets(&["http://a:1, https://b:2/", "http://a:1", " ", "dns:///c:3"]).unwrap();
        assert_eq!(
            targets,
            vec![
                url("http://a:1", "a", false),
                url("https://b:2", "b", true),
                Target::Dns {
                    host: "c".into(),
                    port: 3
                },
            ]
        );
        assert_eq!(targets[2].to_string(), "dns:///c:3");
    }

    #[test]
    fn dns_names_with_ipv6() {
        assert_eq!(
            parse_target("dns:///[::1]:50051").unwrap(),
            Target::Dns {
                host: "::1".into(),
                port: 50051
            }
        );
        assert_eq!(
            parse_target("dns:///[::1]:50051").unwrap().to_string(),
            "dns:///[::1]:50051"
        );
        assert_eq!(
            parse_target("https://[::1]:443").unwrap(),
            url("https://[::1]:443", "::1", true)
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        let cases = [
            ("127.0.0.1:50051", "missing scheme"),
            ("ftp://a:1", "unknown scheme"),
            ("dns://8.8.8.8/a:1", "DNS server"),
            ("dns:///a", "missing :PORT"),
            ("dns:///a:http", "invalid port"),
            ("dns:///:1", "no host"),
            ("dns:///a:0", "port 0"),
            ("dns:///a/b:1", "invalid host"),
            ("http://a:1/v1", "no path"),
            ("http://", "not a URL"),
            ("http://u:p@a:1", "user info"),
        ];
        for (input, needle) in cases {
            let err = parse_target(input).unwrap_err().to_string();
            assert!(err.contains(needle), "{input}: {err}");
            assert!(err.contains(input), "the error names the address: {err}");
        }
        assert!(matches!(
            parse_targets(&[" , "]),
            Err(ClientError::NoAddress)
        ));
        assert!(matches!(
            parse_targets::<&str>(&[]),
            Err(ClientError::NoAddress)
        ));
    }
}
