//! HTTP errors: every refusal is `{"error": "..."}` with one status per kind.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

use super::fault::{kind_for, CoreError, ErrorKind};
use super::wire::BadRequest;

/// The HTTP status of each kind of core error.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Unavailable | ErrorKind::Overloaded | ErrorKind::Deadline => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorKind::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::ExecutionTimeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::NotAllowed => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP status of each library error (through [`kind_for`]).
pub fn status_for(e: &Error) -> StatusCode {
    http_status(kind_for(e))
}

/// An HTTP error response: status, message, and whether to send `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message (`{"error": message}`).
    pub message: String,
    /// Send `Retry-After: 1` (overload and not-ready answers).
    pub retry_after: bool,
    /// For validation refusals: the rule and the model input, for metrics.
    pub rejection: Option<(&'static str, String)>,
    /// Send `Connection: close`: the answer comes before the request's body was read, so the
    /// connection cannot carry another request.
    pub close: bool,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            retry_after: false,
            rejection: None,
            close: false,
        }
    }

    /// This error, answered before the body was read (`Connection: close`).
    pub fn closing(mut self) -> ApiError {
        self.close = true;
        self
    }

    /// An overload answer with `Retry-After`.
    pub fn overloaded(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: true,
            ..ApiError::new(status, message)
        }
    }
}

impl From<CoreError> for ApiError {
    fn from(e: CoreError) -> ApiError {
        ApiError {
            status: http_status(e.kind),
            message: e.message,
            retry_after: e.retry_after,
            rejection: e.rejection,
            close: false,
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(b: BadRequest) -> ApiError {
        ApiError::from(CoreError::from(b))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        ApiError::from(CoreError::from(e))
    }
}

/// `{"error": message}` as bytes.
pub fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            error_body(&self.message),
        )
            .into_response();
        if self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.close {
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        r
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::artifact::ArtifactError;
    use crate::pjrt::{LoadError, PjrtError};
    use crate::plugin::NotFound;
    use crate::tensor::TensorError;
    use crate::validate::InputError;
    use crate::DType;

    fn contract() -> PjrtError {
        PjrtError::Contract {
            function: "PJRT_LoadedExecutable_Execute",
            detail: "x".into(),
        }
    }

    #[test]
    fn every_library_error_has_one_status() {
        let cases: Vec<(Error, u16)> = vec![
            (
                Error::InvalidInput(InputError::Duplicate { name: "x".into() }),
                400,
            ),
            (
                Error::Tensor(TensorError::DType {
                    expected: DType::F32,
                    got: DType::I32,
                }),
                400,
            ),
            (
                Error::Artifact(ArtifactError::UnknownFormat {
                    found: "junk".into(),
                }),
                422,
            ),
            (Error::CompileRejected(contract()), 422),
            (
                Error::PluginNotFound(NotFound {
                    want: None,
                    looked: vec![],
                }),
                503,
            ),
            (
                Error::PluginLoad(LoadError::NotFound {
                    path: "/x.so".into(),
                }),
                503,
            ),
            (Error::Plugin(contract()), 500),
            (
                Error::Io {
                    path: "f".into(),
                    error: std::io::Error::other("e"),
                },
                500,
            ),
            (Error::Internal("bug".into()), 500),
        ];
        for (e, want) in cases {
            let msg = e.to_string();
            let api = ApiError::from(e);
            assert_eq!(api.status.as_u16(), want, "{msg}");
            assert_eq!(api.message, msg);
            // Only input errors count as validation rejections.
            assert_eq!(api.rejection.is_some(), want == 400, "{msg}");
            let r = api.into_response();
            assert_eq!(r.status().as_u16(), want);
            assert_eq!(
                r.headers().get(header::CONTENT_TYPE).unwrap(),
                "application/json"
            );
        }
    }

    #[test]
    fn error_bodies_are_json() {
        let b = error_body("a \"quoted\" message\nwith a newline");
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["error"], "a \"quoted\" message\nwith a newline");
        let r = ApiError::overloaded(StatusCode::TOO_MANY_REQUESTS, "busy").into_response();
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");
    }
}
