//! Where the serving path's blocking work runs.

/// Runs blocking work (decoding, validation, execution, encoding) off the async workers. Every
/// hand-off of the serving path goes through here, so the strategy changes in one place.
pub fn offload<F, T>(f: F) -> tokio::task::JoinHandle<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
}
