//! RabbitMQ: connecting, the contract's topology, publishing with
//! publisher confirms, and the deliveries a worker holds until it settles
//! them.

mod delivery;
mod publisher;
mod settle;
mod topology;

pub use delivery::Delivery;
pub use publisher::{Message, PublishError, Publisher};

pub use settle::Settler;
pub use topology::{
    TopologyError, consumed_queues, declare_topology, delete_topology, partition_queues,
    subscribe_to_events,
};

use crate::config::{AmqpSettings, TlsFileError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};

/// Why no connection to the broker was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TLS files could not be read.
    #[error(transparent)]
    Tls(#[from] TlsFileError),
    /// The CA file is not PEM text.
    #[error("amqp.tls_ca_file is not PEM text")]
    CaNotText(#[source] std::string::FromUtf8Error),
    /// A channel could not be opened on the new connection.
    #[error("opening a channel")]
    Channel(#[source] lapin::Error),
    /// The broker refused, or could not be reached, or the TLS handshake
    /// failed.
    #[error("connecting to the broker at {url}")]
    Broker {
        /// The URL, password hidden.
        url: String,
        /// Why.
        #[source]
        source: lapin::Error,
    },
}

/// Opens a connection that shows up as `name` in the broker's connection
/// list. An `amqps://` URL is TLS, verified against the system's roots and
/// `amqp.tls_ca_file`, with `amqp.tls_cert_file` / `tls_key_file` for
/// mutual TLS; it never falls back to plaintext. Every connection of the
/// worker, the producer API and the tools is made here.
pub async fn connect(amqp: &AmqpSettings, name: &str) -> Result<Connection, ConnectError> {
    crate::tls::install_crypto();
    let files = amqp.tls().read()?;
    let tls = OwnedTLSConfig {
        cert_chain: files
            .ca
            .map(String::from_utf8)
            .transpose()
            .map_err(ConnectError::CaNotText)?,
        identity: files
            .identity
            .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
    };
    let broker = |source| ConnectError::Broker {
        url: amqp.url.redacted(),
        source,
    };
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    DefaultConnectionBuilder::new()
        .map_err(broker)?
        .with_uri_str(amqp.url.expose().to_owned())
        .with_properties(properties)
        .with_tls_config(tls)
        .connect()
        .await
        .map_err(broker)
}
