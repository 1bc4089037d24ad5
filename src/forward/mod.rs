//! Forwarding: the data path. Listeners accept clients, each request is routed by its key and
//! streamed to the chosen backend over a pooled upstream connection.

mod attempt;
pub(crate) mod body;
mod client;
pub(crate) mod connection;
pub(crate) mod error;
pub(crate) mod h1;
pub(crate) mod headers;
pub(crate) mod listener;
pub(crate) mod request;
mod retry;
mod tls;
pub(crate) mod upstream;

pub(crate) use headers::Client;
pub(crate) use request::handle;
