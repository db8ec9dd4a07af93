//! NAT pairs over real sockets: the [`PairAgent`] that owns a
//! [`PairPool`](wormhole_core::pair::PairPool), its UDP sockets and its
//! signalling streams; the driver task that carries out the pool's
//! outputs; and QUIC on a taken pair's own socket.

mod agent;
mod driver;
mod quic;

pub use agent::{
    AgentConfig, AgentError, AgentEvent, AgentStats, IoStats, PairAgent, PairLease, PairStatus,
};
pub use quic::{PairConnectError, client_config, server_config};
