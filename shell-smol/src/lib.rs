//! Wormhole on smol.
