//! `ember serve`: the protocols other tools speak, in front of one Ember device.
//!
//! - [`openai`]: the OpenAI chat API over HTTP (programs, chat UIs);
//! - [`wyoming`]: a Wyoming `handle` service (Home Assistant's voice pipelines);
//! - [`backend`]: the device behind both — a board running `emberd` on a serial port, or an
//!   image served in this process by the same device code — with its queue of replies.

pub mod backend;
pub mod openai;
pub mod wyoming;

use backend::Backend;
use std::net::SocketAddr;

/// What to serve, and where.
#[derive(Debug, Clone)]
pub struct Frontends {
    /// The HTTP API's address.
    pub http: Option<SocketAddr>,
    /// The Wyoming service's address.
    pub wyoming: Option<SocketAddr>,
    /// The key HTTP clients must send, if any.
    pub api_key: Option<String>,
    /// What the Wyoming service says about itself.
    pub program: wyoming::Program,
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
    /// The runtime or a server failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Serves `backend` on the front ends until Ctrl-C or SIGTERM; `on_listening` gets each bound
/// address as a URL (`http://127.0.0.1:8080/v1`, `tcp://127.0.0.1:10400`) once it takes
/// connections.
pub fn serve(
    backend: Backend,
    frontends: Frontends,
    on_listening: &mut dyn FnMut(&str),
) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ember-serve")
        .build()?;
    runtime.block_on(async {
        let bind = |address: SocketAddr| async move {
            tokio::net::TcpListener::bind(address)
                .await
                .map_err(|source| ServeError::Bind { address, source })
        };
        let http = match frontends.http {
            Some(address) => {
                let listener = bind(address).await?;
                on_listening(&format!("http://{}/v1", listener.local_addr()?));
                Some(listener)
            }
            None => None,
        };
        if let Some(address) = frontends.wyoming {
            let listener = bind(address).await?;
            on_listening(&format!("tcp://{}", listener.local_addr()?));
            tokio::spawn(wyoming::serve(
                listener,
                backend.clone(),
                frontends.program.clone(),
            ));
        }
        match http {
            Some(listener) => {
                let app = openai::router(backend, frontends.api_key);
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown())
                    .await?;
            }
            None => shutdown().await,
        }
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = interrupt => {}
        _ = terminate.recv() => {}
    }
}

/// Re-exported for [`Frontends`] users.
pub use backend::{Busy, Info, LocalDevice};
