//! Wormhole on tokio.
