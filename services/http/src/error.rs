//! The one error shape of the HTTP API, `{"code": "NOT_FOUND", "message": "..."}`, and the one
//! map from gRPC codes to HTTP statuses. Every failure a client can see goes through
//! [`ApiError`], so no path answers with axum's plain-text rejections or an HTML page.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tonic::Code;

/// An error answer: the HTTP status, the gRPC code name and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The `Allow` header of a 405 answer: the methods the resource does support.
    allow: Option<&'static str>,
}

impl ApiError {
    /// An error with this gRPC code, answered with the HTTP status that code maps to.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: http_status(code),
            code: code_name(code),
            message: message.into(),
            allow: None,
        }
    }

    /// An error of the HTTP layer itself (404, 405), which has no gRPC call behind it:
    /// the status is the HTTP one, the code the nearest gRPC name, so clients parse one shape.
    pub fn http(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code_name(code),
            message: message.into(),
            allow: None,
        }
    }

    /// 405 `UNIMPLEMENTED`: `method` is not one of `allow` (e.g. `"GET, HEAD"`), the methods
    /// the resource at `path` supports, which the answer lists in its `Allow` header.
    pub fn method_not_allowed(
        method: impl std::fmt::Display,
        path: &str,
        allow: &'static str,
    ) -> Self {
        let mut error = Self::http(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unimplemented,
            format!("method {method} is not allowed on {path} (allowed: {allow})"),
        );
        error.allow = Some(allow);
        error
    }

    /// `INVALID_ARGUMENT` (400): the request could not be translated into a proto message.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The canonical gRPC code name, e.g. `INVALID_ARGUMENT`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The message shown to the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The JSON body, also used as the `data` of an SSE `error` event.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message })
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self::new(status.code(), status.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.to_json())).into_response();
        // Errors are answers about this request, never something a cache may replay.
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            // How to authenticate (RFC 9110 requires it on a 401): an API key as a bearer token.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dalc\""),
            );
        }
        if let Some(allow) = self.allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

/// The HTTP status a gRPC code maps to: the usual google.rpc mapping, except FAILED_PRECONDITION,
/// which is 412 as the API documents (the request's precondition, e.g. a cancel's PENDING, does
/// not hold), and CANCELLED, nginx's 499.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // 499 is a valid status code; the fallback is unreachable but keeps this panic-free.
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The canonical UPPER_SNAKE name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_maps_as_documented() {
        let table = [
            (Code::Ok, 500),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 412),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
            let upper: String = format!("{code:?}")
                .chars()
                .flat_map(|c| {
                    let sep = c.is_uppercase().then_some('_');
                    sep.into_iter().chain(c.to_uppercase())
                })
                .collect();
            assert_eq!(code_name(code), upper.trim_start_matches('_'), "{code:?}");
        }
    }
}
