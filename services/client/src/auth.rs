//! The API key: `authorization: Bearer <key>` on every call.

use std::fmt;

use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::Interceptor,
};

use crate::ClientError;

/// Adds the API key, when there is one, to every request. Its `Debug` never shows the key.
#[derive(Clone, Default)]
pub struct ApiKey(Option<AsciiMetadataValue>);

impl ApiKey {
    /// `None`: calls go out without an `authorization` header.
    pub fn new(key: Option<&str>) -> Result<ApiKey, ClientError> {
        let Some(key) = key else {
            return Ok(ApiKey(None));
        };
        let key = key.trim();
        // Visible ASCII only: HTTP would pass other bytes through, and servers would not
        // agree on what they mean.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidApiKey);
        }
        let mut value: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {key}"))
            // The parse error would quote the key: say only what is wrong with it.
            .map_err(|_| ClientError::InvalidApiKey)?;
        // Keeps the header out of HPACK's tables and out of anything that dumps headers.
        value.set_sensitive(true);
        Ok(ApiKey(Some(value)))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        f.debug_tuple("ApiKey").field(&shown).finish()
    }
}

impl Interceptor for ApiKey {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_key_goes_out_as_a_bearer_token_and_is_never_shown() {
        let mut key = ApiKey::new(Some("s3cret")).unwrap();
        let request = key.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret"
        );
        assert!(!format!("{key:?}").contains("s3cret"));

        let mut none = ApiKey::new(None).unwrap();
        let request = none.call(Request::new(())).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_refused_without_echoing_it() {
        for bad in ["", "  ", "bad\nkey", "clé", "two words"] {
            let err = ApiKey::new(Some(bad)).unwrap_err().to_string();
            assert!(err.contains("invalid API key"), "{err}");
            assert!(bad.trim().is_empty() || !err.contains(bad), "{err}");
        }
    }
}
