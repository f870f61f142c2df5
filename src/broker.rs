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

use crate::config::SecretUrl;
use lapin::{Connection, ConnectionProperties};

/// Opens a connection that shows up as `name` in the broker's connection list.
pub async fn connect(url: &SecretUrl, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url.expose(), properties).await
}
