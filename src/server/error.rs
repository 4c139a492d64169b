//! HTTP errors: every refusal is `{"error": "..."}` with one status per kind.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::Error;

use super::wire::BadRequest;

/// The HTTP status of each library error. The one place that decides it: a new [`Error`]
/// variant fails to compile here until it is given a status.
pub fn status_for(e: &Error) -> StatusCode {
    match e {
        // The caller's input does not match the model, or breaks its value policy.
        Error::InvalidInput(_) | Error::Tensor(_) | Error::PolicyViolation(_) => {
            StatusCode::BAD_REQUEST
        }
        // The model (or its policy file) cannot be run as given.
        Error::Artifact(_)
        | Error::CompileRejected(_)
        | Error::Policy(_)
        | Error::Params(_)
        | Error::Bind(_) => StatusCode::UNPROCESSABLE_ENTITY,
        // No device to run on.
        Error::PluginNotFound(_) | Error::PluginLoad(_) | Error::ClientCreate { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        // The compiler is saturated, or a compile ran out of time.
        Error::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Timeout(_) | Error::ExecutionTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        Error::MemoryBudget { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        // Failures on our side.
        Error::Plugin(_)
        | Error::Io { .. }
        | Error::Internal(_)
        | Error::WorkerCrashed(_)
        | Error::ExecutionFailed(_)
        | Error::SandboxViolation(_)
        | Error::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
        #[cfg(feature = "cuda")]
        Error::Cuda(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
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

    /// 404 for a model (or version) the server does not have.
    pub fn unknown_model(name: &str, version: Option<&str>) -> ApiError {
        let cut = |s: &str| -> String {
            if s.chars().count() > 128 {
                format!("{}...", s.chars().take(128).collect::<String>())
            } else {
                s.to_string()
            }
        };
        let (name, version) = (cut(name), version.map(cut));
        let what = match version {
            Some(v) => format!("unknown model '{name}' version '{v}'"),
            None => format!("unknown model '{name}'"),
        };
        ApiError::new(StatusCode::NOT_FOUND, what)
    }

    /// An overload answer with `Retry-After`.
    pub fn overloaded(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            retry_after: true,
            ..ApiError::new(status, message)
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(b: BadRequest) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: b.message,
            retry_after: false,
            rejection: Some((b.rule, b.input.unwrap_or_default())),
            close: false,
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        let status = status_for(&e);
        let rejection = match &e {
            Error::InvalidInput(i) => {
                let (rule, input) = super::wire::input_error_rule(i);
                Some((rule, input.unwrap_or_default().to_string()))
            }
            Error::Tensor(_) => Some(("tensor", String::new())),
            Error::PolicyViolation(v) => Some((v.rule.key(), v.input.clone().unwrap_or_default())),
            _ => None,
        };
        ApiError {
            status,
            message: e.to_string(),
            retry_after: false,
            rejection,
            close: false,
        }
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
