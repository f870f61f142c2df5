//! RabbitMQ: connecting, the contract's topology, publishing with
//! publisher confirms, and the deliveries a worker holds until it settles
//! them.

mod delivery;
mod publisher;
mod settle;
mod topology;

pub use delivery::{Delivery, InFlight};
pub use publisher::{Message, PublishError, Publisher};

pub use settle::Settler;
pub use topology::{
    Declared, TopologyError, consumed_queues, declare_topology, declare_topology_on,
    delete_topology, partition_queues, subscribe_to_events,
};

use crate::config::{AmqpSettings, SecretUrl, TlsFileError};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};
use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long one node of a cluster may take to accept a connection (TCP,
/// TLS and AMQP handshakes) before the next is tried: a node that is gone
/// may not even refuse, and the others must not wait behind it. A single
/// URL has no such bound, as before clusters.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// No node of the cluster accepted a connection.
    #[error("connecting to the broker: no node of the cluster answered ({})", Tried(.tried))]
    Cluster {
        /// Every node tried, in order, and why each failed.
        tried: Vec<NodeFailure>,
    },
    /// The cluster's URLs mix `amqps://` and `amqp://`: connecting to the
    /// plaintext ones would be a fallback from TLS.
    #[error(
        "amqp.url mixes amqps:// and amqp:// URLs ({urls}): the nodes of one cluster are \
         reached the same way, and a TLS connection never falls back to plaintext"
    )]
    MixedSchemes {
        /// The URLs, passwords hidden.
        urls: String,
    },
}

/// One node that did not accept a connection.
#[derive(Debug)]
pub struct NodeFailure {
    /// The node's URL, password hidden.
    pub url: String,
    /// Why.
    pub error: NodeError,
}

/// Why one node of a cluster did not accept a connection.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// It refused, could not be reached, or the handshake failed.
    #[error(transparent)]
    Broker(lapin::Error),
    /// It did not finish the handshakes in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Every failure of a [`ConnectError::Cluster`], for its message.
struct Tried<'a>(&'a [NodeFailure]);

impl fmt::Display for Tried<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, node) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{}: {}", node.url, node.error)?;
        }
        Ok(())
    }
}

/// Opens a connection that shows up as `name` in the broker's connection
/// list. An `amqps://` URL is TLS, verified against the system's roots and
/// `amqp.tls_ca_file`, with `amqp.tls_cert_file` / `tls_key_file` for
/// mutual TLS; it never falls back to plaintext. Every connection of the
/// worker, the producer API and the tools is made here.
///
/// `amqp.url` may list the nodes of one cluster, comma-separated. Each
/// node is tried in turn until one accepts, starting at one chosen by the
/// host and connection name, so that replicas spread over the nodes (see
/// [`node_order`]); the TLS settings apply to every node. Asked again for
/// the same name, as a worker does when its connection is lost, it starts
/// at the node after the one it connected to last; and a node that failed
/// a connection in the last minute is tried after all the others: a node
/// that just died is tried last, not first. A node gets 10 s to accept.
pub async fn connect(amqp: &AmqpSettings, name: &str) -> Result<Connection, ConnectError> {
    crate::tls::install_crypto();
    let nodes = amqp.url.split();
    let tls_schemes = nodes.iter().filter(|u| is_tls(u)).count();
    if tls_schemes != 0 && tls_schemes != nodes.len() {
        return Err(ConnectError::MixedSchemes {
            urls: amqp.url.redacted(),
        });
    }
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
    if let [url] = nodes.as_slice() {
        return connect_node(url, &tls, name)
            .await
            .map_err(|source| ConnectError::Broker {
                url: url.redacted(),
                source,
            });
    }
    let order = ROTATION.order(name, &nodes, Instant::now());
    let mut tried = Vec::new();
    for &i in &order {
        let url = &nodes[i];
        let error = match tokio::time::timeout(NODE_TIMEOUT, connect_node(url, &tls, name)).await {
            Ok(Ok(connection)) => {
                ROTATION.connected(name, &nodes, i);
                if !tried.is_empty() {
                    info!(node = %url, skipped = tried.len(), "connected to the broker");
                }
                return Ok(connection);
            }
            Ok(Err(e)) => NodeError::Broker(e),
            Err(_) => NodeError::Timeout(NODE_TIMEOUT),
        };
        warn!(node = %url, error = %error, "a broker node did not accept the connection; trying the next");
        ROTATION.failed(url, Instant::now());
        tried.push(NodeFailure {
            url: url.redacted(),
            error,
        });
    }
    // None answered: the next try starts one node further on.
    ROTATION.passed(name, order[0], nodes.len());
    Err(ConnectError::Cluster { tried })
}

/// One connection attempt to one node.
async fn connect_node(
    url: &SecretUrl,
    tls: &OwnedTLSConfig,
    name: &str,
) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    DefaultConnectionBuilder::new()?
        .with_uri_str(url.expose().to_owned())
        .with_properties(properties)
        .with_tls_config(tls.clone())
        .connect()
        .await
}

/// Whether `url` is `amqps://` (schemes are case-insensitive).
fn is_tls(url: &SecretUrl) -> bool {
    url.expose()
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("amqps://"))
}

/// The broker refused an operation with 404 NOT_FOUND: the exchange or
/// queue it names does not exist (the topology was never declared, or was
/// deleted). The broker closes the channel.
pub fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(p) if p.get_id() == 404)
}

/// The nodes of `url` in the order a process's first connection named
/// `name` tries them: from a node picked by a hash (FNV-1a) of this host's
/// name and `name`, then round the list. Later connections of the same
/// name start further on.
pub fn node_order(url: &SecretUrl, name: &str) -> Vec<SecretUrl> {
    let mut nodes = url.split();
    let start = spread(&host_and(name), nodes.len());
    nodes.rotate_left(start);
    nodes
}

/// A stable position in `0..n` for `key` (FNV-1a, 64 bits), the same on
/// every platform and build: how replicas named differently spread over
/// nodes or partitions.
pub(crate) fn spread(key: &str, n: usize) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % n.max(1) as u64) as usize
}

/// The key a connection name is spread by: with the host name in front,
/// so that replicas whose connections share a name (every producer is
/// `reservation-producer`) still start at different nodes.
fn host_and(name: &str) -> String {
    static HOST: LazyLock<String> = LazyLock::new(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default()
    });
    format!("{}/{name}", *HOST)
}

/// Where each connection of this process starts, and which nodes it
/// tries last.
static ROTATION: Rotation = Rotation::new();

/// How long a node that refused a connection (or did not answer) is tried
/// after the others: long enough that reconnects do not wait on a dead node
/// again and again, short enough that a restarted node gets its share of
/// connections back soon.
const SUSPECT_FOR: Duration = Duration::from_secs(60);

/// The order in which a connection tries the nodes. Per connection name,
/// it starts at the node after the one that name reached last: a name
/// asked for again replaces a connection that was lost (the worker's
/// session loop), and its node is the likeliest to be gone. Nodes that
/// failed a connection within [`SUSPECT_FOR`] go last, whoever tried them.
struct Rotation(LazyLock<Mutex<Memory>>);

/// What [`Rotation`] remembers.
#[derive(Default)]
struct Memory {
    /// Per connection name, the index of the node to start at.
    next: HashMap<String, usize>,
    /// When each node (by URL) last failed a connection.
    failed: HashMap<SecretUrl, Instant>,
}

impl Rotation {
    const fn new() -> Rotation {
        Rotation(LazyLock::new(Mutex::default))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The indexes of `nodes` in the order `name` tries them `now`.
    fn order(&self, name: &str, nodes: &[SecretUrl], now: Instant) -> Vec<usize> {
        let n = nodes.len();
        let memory = self.lock();
        let start = match memory.next.get(name) {
            Some(&i) => i % n,
            None => spread(&host_and(name), n),
        };
        let mut order: Vec<usize> = (0..n).map(|k| (start + k) % n).collect();
        // A stable sort: suspects keep their rotation order, after the rest.
        order.sort_by_key(|&i| {
            memory
                .failed
                .get(&nodes[i])
                .is_some_and(|&at| now.saturating_duration_since(at) < SUSPECT_FOR)
        });
        order
    }

    /// `name` reached node `i` of `nodes`: next time, start after it.
    fn connected(&self, name: &str, nodes: &[SecretUrl], i: usize) {
        let mut memory = self.lock();
        memory.failed.remove(&nodes[i]);
        memory.next.insert(name.to_owned(), (i + 1) % nodes.len());
    }

    /// `name` reached no node, starting at node `i` of `n`: next time,
    /// start after it.
    fn passed(&self, name: &str, i: usize, n: usize) {
        self.lock().next.insert(name.to_owned(), (i + 1) % n);
    }

    /// `url` failed a connection `at`.
    fn failed(&self, url: &SecretUrl, at: Instant) {
        self.lock().failed.insert(url.clone(), at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn spread_is_fnv1a_and_spreads_replica_names() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector).
        assert_eq!(
            spread("a", 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as usize
        );
        let starts: HashSet<_> = (0..16)
            .map(|i| spread(&format!("reservation-worker-{i}"), 4))
            .collect();
        assert!(starts.len() >= 3, "{starts:?}");
        assert_eq!(spread("anything", 0), 0, "no division by zero");
    }

    #[test]
    fn replicas_start_at_different_nodes_and_each_order_visits_every_node_once() {
        let url = SecretUrl::new("amqp://u:p@a/v,amqp://u:p@b/v,amqp://u:p@c/v,amqp://u:p@d/v");
        let nodes = url.split();
        let mut firsts = HashSet::new();
        for i in 0..16 {
            let order = node_order(&url, &format!("reservation-worker-{i}"));
            assert_eq!(order.len(), nodes.len());
            let start = nodes.iter().position(|n| *n == order[0]).unwrap();
            for (k, node) in order.iter().enumerate() {
                assert_eq!(*node, nodes[(start + k) % nodes.len()], "round the list");
            }
            firsts.insert(start);
        }
        assert!(firsts.len() >= 3, "16 replicas start at {firsts:?}");
        assert_eq!(
            node_order(&SecretUrl::new("amqp://only/v"), "any"),
            [SecretUrl::new("amqp://only/v")]
        );
    }

    fn three_nodes() -> Vec<SecretUrl> {
        SecretUrl::new("amqp://u:p@a/v,amqp://u:p@b/v,amqp://u:p@c/v").split()
    }

    #[test]
    fn a_name_connecting_again_starts_after_its_last_node_and_so_visits_every_node() {
        let (rotation, nodes, now) = (Rotation::new(), three_nodes(), Instant::now());
        let name = "reservation-worker-7";
        let first = spread(&host_and(name), 3);
        assert_eq!(
            rotation.order(name, &nodes, now),
            [first, (first + 1) % 3, (first + 2) % 3],
            "a fresh name starts by its hash, and goes round the list"
        );
        let mut visited = Vec::new();
        for _ in 0..3 {
            let node = rotation.order(name, &nodes, now)[0];
            visited.push(node);
            // Connected there; then that connection was lost.
            rotation.connected(name, &nodes, node);
        }
        assert_eq!(
            visited,
            [first, (first + 1) % 3, (first + 2) % 3],
            "never the same node twice in a row"
        );
        assert_eq!(
            rotation.order(name, &nodes, now)[0],
            first,
            "and round again"
        );
        let other = spread(&host_and("another"), 3);
        assert_eq!(rotation.order("another", &nodes, now)[0], other);
        rotation.passed("another", other, 3);
        assert_eq!(
            rotation.order("another", &nodes, now)[0],
            (other + 1) % 3,
            "after no node answered, the next try starts one further on"
        );
    }

    #[test]
    fn a_node_that_failed_is_tried_last_for_a_while_by_every_name() {
        let (rotation, nodes, now) = (Rotation::new(), three_nodes(), Instant::now());
        let name = "reservation-worker-7";
        let order = rotation.order(name, &nodes, now);
        rotation.failed(&nodes[order[0]], now);
        assert_eq!(
            rotation.order(name, &nodes, now + Duration::from_secs(1)),
            [order[1], order[2], order[0]]
        );
        let other = rotation.order("reservation-producer", &nodes, now);
        assert_eq!(other.last(), Some(&order[0]), "{other:?}");
        assert_eq!(
            rotation.order(name, &nodes, now + SUSPECT_FOR),
            order,
            "until it had time to come back"
        );
        rotation.failed(&nodes[order[0]], now);
        rotation.connected("reservation-producer", &nodes, order[0]);
        assert_eq!(
            rotation.order(name, &nodes, now),
            order,
            "a node that accepts a connection is trusted again"
        );
    }

    #[test]
    fn a_cluster_error_names_every_node_tried_without_passwords() {
        let e = ConnectError::Cluster {
            tried: vec![
                NodeFailure {
                    url: SecretUrl::new("amqp://u:s3cret@a:5672/v").redacted(),
                    error: NodeError::Timeout(NODE_TIMEOUT),
                },
                NodeFailure {
                    url: SecretUrl::new("amqp://u:s3cret@b:5672/v").redacted(),
                    error: NodeError::Broker(lapin::Error::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionRefused,
                    ))),
                },
            ],
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "connecting to the broker: no node of the cluster answered \
                 (amqp://u:***@a:5672/v: no answer within 10s; amqp://u:***@b:5672/v: "
            ),
            "{text}"
        );
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[tokio::test]
    async fn a_list_mixing_tls_and_plaintext_is_refused_before_connecting() {
        let mut amqp = crate::config::Settings::defaults().amqp;
        amqp.url = SecretUrl::new("AMQPS://u:s3cret@a:5671/v,amqp://u:s3cret@b:5672/v");
        let e = connect(&amqp, "mixed").await.unwrap_err();
        assert!(matches!(e, ConnectError::MixedSchemes { .. }), "{e:?}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}
