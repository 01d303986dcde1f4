//! Runtimes for tests written as plain `fn`s: the harness's own HTTP calls, and the async bodies
//! that `on_both_backends!` runs.

use std::future::Future;

/// A runtime for the harness's HTTP calls and the simulator.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs an async test body on a fresh multi-threaded runtime.
pub fn block_on<F: Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body)
}
