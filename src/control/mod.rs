//! Control: starting the proxy, applying new configs (reload), process signals and the health
//! checks that flip backends up and down.

pub(crate) mod discovery;
pub(crate) mod health;
pub(crate) mod limits;
pub mod proxy;
pub mod reload;
pub mod signals;

pub(crate) use proxy::Proxy;
