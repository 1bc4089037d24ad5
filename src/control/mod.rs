//! Control: starting the proxy, applying new configs (reload), process signals and the health
//! checks that flip backends up and down.

pub mod health;
pub mod proxy;
pub mod reload;
pub mod signals;

pub use proxy::Proxy;
