//! What a rush fires: its options and the commands it generates. Pure and
//! deterministic for a seed; the fault-injection tests fire the same
//! traffic.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reservation_worker::domain::{CommandId, CustomerId, ResourceId};
use reservation_worker::message::CommandBody;

/// What to fire.
#[derive(Debug, Clone, clap::Args)]
pub struct RushOptions {
    /// The resource to sell (default: a new `rush-<time>` id).
    #[arg(long)]
    pub resource: Option<String>,
    /// Reserve commands to publish, duplicates included.
    #[arg(long, default_value_t = 20_000)]
    pub commands: usize,
    /// Seats on sale.
    #[arg(long, default_value_t = 1_000)]
    pub capacity: u32,
    /// Most seats per customer (0 for no limit).
    #[arg(long, default_value_t = 4)]
    pub limit: u32,
    /// Distinct customers.
    #[arg(long, default_value_t = 5_000)]
    pub customers: usize,
    /// Seats per reserve, from 1 to this.
    #[arg(long, default_value_t = 2)]
    pub max_quantity: u32,
    /// Share of publishes that repeat an earlier command (0.0 to 0.9).
    #[arg(long, default_value_t = 0.1)]
    pub duplicates: f64,
    /// Seed for the generated traffic.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Give up waiting for outcomes after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
}

/// The reserve commands: `distinct` fresh ones, then duplicates of earlier
/// ones mixed in at random positions. Deterministic for a seed.
pub fn generate(resource: &ResourceId, o: &RushOptions) -> Vec<CommandBody> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let duplicates = ((o.commands as f64) * o.duplicates.clamp(0.0, 0.9)).round() as usize;
    let distinct = o.commands - duplicates;
    let mut bodies: Vec<CommandBody> = (0..distinct)
        .map(|i| CommandBody::Reserve {
            command_id: CommandId::try_from(format!("{resource}-r{i}")).expect("short id"),
            resource_id: resource.clone(),
            customer_id: CustomerId::try_from(format!(
                "u-{}",
                rng.random_range(0..o.customers.max(1))
            ))
            .expect("short id"),
            quantity: rng.random_range(1..=o.max_quantity.max(1)),
        })
        .collect();
    for _ in 0..duplicates {
        let original = bodies[rng.random_range(0..distinct.max(1))].clone();
        let at = rng.random_range(0..=bodies.len());
        bodies.insert(at, original);
    }
    bodies
}
