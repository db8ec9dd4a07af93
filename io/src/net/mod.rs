//! What every connection needs: identities and certificate pinning, the
//! QUIC settings of the file protocol, frames on streams, tickets, and the
//! [`Transport`] by which a mount reaches its host.

pub mod frame;
pub mod identity;
pub mod quic;
pub mod ticket;
pub mod transport;

pub use identity::{Fingerprint, Identity, QuicConfigError};
pub use ticket::{Ticket, TicketError};
pub use transport::{HostLink, PathUpgrade, QuicTransport, Renewal, RenewingTransport, Transport};
