//! API keys and tenants.
//!
//! The keys file holds one key a line as `TENANT SHA256-HEX-OF-KEY` (`#` starts a comment), so
//! the file never holds a key itself. A call presents `authorization: Bearer <key>`; its SHA-256
//! is compared with every known hash in constant time, and the matching line names the caller's
//! tenant. Keys are never logged. Without a keys file every call belongs to the one unnamed
//! tenant.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;

use crate::ApiError;

/// The longest tenant name: it is stored with every task.
pub const MAX_TENANT_LEN: usize = 64;

/// Who is calling: the tenant every task of the call belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tenant(pub String);

/// The API keys a gateway accepts, by the SHA-256 of each key.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<([u8; 32], Tenant)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are not keys, but there is no reason to print them either.
        f.debug_struct("ApiKeys")
            .field("keys", &self.entries.len())
            .finish()
    }
}

/// A keys file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeysFileError {
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API keys file line {line}: {reason} (expected `TENANT SHA256-HEX-OF-KEY`)")]
    Line { line: usize, reason: String },
    #[error("the API keys file holds no keys: no call could be authenticated")]
    Empty,
}

impl ApiKeys {
    pub fn load(path: &Path) -> Result<Self, KeysFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, KeysFileError> {
        let mut entries = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let bad = |reason: &str| KeysFileError::Line {
                line: number + 1,
                reason: reason.to_owned(),
            };
            let mut fields = line.split_whitespace();
            let (Some(tenant), Some(hash), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(bad("two fields are needed"));
            };
            if !valid_tenant(tenant) {
                return Err(bad("a tenant is 1-64 of A-Z a-z 0-9 . _ -"));
            }
            let hash = decode_sha256_hex(hash).ok_or_else(|| bad("not 64 hex digits"))?;
            entries.push((hash, Tenant(tenant.to_owned())));
        }
        if entries.is_empty() {
            return Err(KeysFileError::Empty);
        }
        Ok(ApiKeys { entries })
    }

    /// Every tenant with a key, once each.
    pub fn tenants(&self) -> Vec<String> {
        let mut tenants: Vec<String> = self.entries.iter().map(|(_, t)| t.0.clone()).collect();
        tenants.sort();
        tenants.dedup();
        tenants
    }

    /// The tenant whose key `metadata` presents.
    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Tenant, ApiError> {
        let key = bearer_token(metadata).ok_or_else(|| {
            ApiError::Unauthenticated(
                "this gateway needs an API key: send `authorization: Bearer <key>`".into(),
            )
        })?;
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // Every entry is compared, in constant time, so timing tells nothing about which (if
        // any) matched.
        let mut found = None;
        for (hash, tenant) in &self.entries {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(tenant);
            }
        }
        found
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("unknown API key".into()))
    }
}

/// A tenant name as the keys file and the CLI's `keygen` accept it.
pub fn valid_tenant(name: &str) -> bool {
    (1..=MAX_TENANT_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The line of the keys file for `key` of `tenant`.
pub fn keys_file_line(tenant: &str, key: &str) -> String {
    let hash = Sha256::digest(key.as_bytes());
    let hex: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{tenant} {hex}")
}

fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn decode_sha256_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(text.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn with_auth(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", value.parse().unwrap());
        metadata
    }

    #[test]
    fn keys_name_their_tenants() {
        let file = format!(
            "# team keys\n{}\n\n{}  # the other team\n",
            keys_file_line("alpha", "key-a"),
            keys_file_line("beta", "key-b")
        );
        let keys = ApiKeys::parse(&file).unwrap();
        let tenant = |value| keys.authenticate(&with_auth(value)).map(|t| t.0);
        assert_eq!(tenant("Bearer key-a").unwrap(), "alpha");
        assert_eq!(tenant("bearer key-b").unwrap(), "beta");
        for wrong in ["Bearer key-c", "Bearer ", "Basic key-a", "key-a"] {
            assert!(
                matches!(tenant(wrong), Err(ApiError::Unauthenticated(_))),
                "{wrong}"
            );
        }
        assert!(keys.authenticate(&MetadataMap::new()).is_err());
    }

    #[test]
    fn bad_files_say_which_line() {
        for (text, line) in [
            ("alpha\n", 1),
            ("# c\nalpha abc\n", 2),
            (
                "bad/name 0000000000000000000000000000000000000000000000000000000000000000",
                1,
            ),
        ] {
            match ApiKeys::parse(text) {
                Err(KeysFileError::Line { line: got, .. }) => assert_eq!(got, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            ApiKeys::parse("# none\n"),
            Err(KeysFileError::Empty)
        ));
    }

    #[test]
    fn the_debug_form_shows_no_hashes() {
        let keys = ApiKeys::parse(&keys_file_line("alpha", "secret")).unwrap();
        assert_eq!(format!("{keys:?}"), "ApiKeys { keys: 1 }");
    }
}
