//! Forwarding: the data path. Listeners accept clients, each request is routed by its key and
//! streamed to the chosen backend over a pooled upstream connection.

pub mod body;
pub mod error;
pub mod headers;
pub mod listener;
pub mod request;
pub mod upstream;

pub use error::ProxyError;
pub use headers::Client;
pub use request::handle;
