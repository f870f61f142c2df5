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
    /// Checkout mode: hold seats instead of reserving them; confirm some
    /// holds, let the others run out, then sell the seats that came back.
    #[arg(long)]
    pub holds: bool,
    /// Checkout mode: share of accepted holds that are confirmed (0.0 to 1.0).
    #[arg(long, default_value_t = 0.7, requires = "holds")]
    pub confirm_ratio: f64,
    /// Checkout mode: how long each hold lasts, in seconds: `N`, or `A-B`
    /// for a random length from A to B.
    #[arg(long, default_value = "2-5", value_parser = parse_secs, requires = "holds")]
    pub hold_secs: HoldSecs,
    /// Where to write the report (SVG: seats remaining and outcomes per
    /// second over time, and the latency distribution). Default:
    /// `<temp dir>/reservation-rush/<resource>.svg`.
    #[arg(long, value_name = "FILE")]
    pub report: Option<std::path::PathBuf>,
}

/// How long holds last: from `min` to `max` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldSecs {
    /// Shortest.
    pub min: u32,
    /// Longest.
    pub max: u32,
}

/// `N` or `A-B`, each from 1 to 86400, A <= B.
fn parse_secs(s: &str) -> Result<HoldSecs, String> {
    let number = |n: &str| -> Result<u32, String> {
        n.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=86_400).contains(n))
            .ok_or_else(|| format!("{n:?} is not a number of seconds from 1 to 86400"))
    };
    let (min, max) = match s.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(s)?, number(s)?),
    };
    if min > max {
        return Err(format!("{min} is more than {max}"));
    }
    Ok(HoldSecs { min, max })
}

/// The reserve commands (holds in checkout mode): `distinct` fresh ones,
/// then duplicates of earlier ones mixed in at random positions.
/// Deterministic for a seed.
pub fn generate(resource: &ResourceId, o: &RushOptions) -> Vec<CommandBody> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let duplicates = ((o.commands as f64) * o.duplicates.clamp(0.0, 0.9)).round() as usize;
    let distinct = o.commands - duplicates;
    let mut bodies: Vec<CommandBody> = (0..distinct)
        .map(|i| {
            let customer_id =
                CustomerId::try_from(format!("u-{}", rng.random_range(0..o.customers.max(1))))
                    .expect("short id");
            let quantity = rng.random_range(1..=o.max_quantity.max(1));
            if o.holds {
                CommandBody::Hold {
                    command_id: CommandId::try_from(format!("{resource}-h{i}")).expect("short id"),
                    resource_id: resource.clone(),
                    customer_id,
                    quantity,
                    hold_secs: rng.random_range(o.hold_secs.min..=o.hold_secs.max),
                }
            } else {
                CommandBody::Reserve {
                    command_id: CommandId::try_from(format!("{resource}-r{i}")).expect("short id"),
                    resource_id: resource.clone(),
                    customer_id,
                    quantity,
                }
            }
        })
        .collect();
    for _ in 0..duplicates {
        let original = bodies[rng.random_range(0..distinct.max(1))].clone();
        let at = rng.random_range(0..=bodies.len());
        bodies.insert(at, original);
    }
    bodies
}

/// Whether the customer of an accepted hold pays (the hold is confirmed):
/// a share `confirm_ratio` of holds, chosen by the hold's id and the seed.
pub fn pays(hold: &CommandId, o: &RushOptions) -> bool {
    let hash = hold
        .as_str()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64 ^ o.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    (hash % 10_000) < (o.confirm_ratio.clamp(0.0, 1.0) * 10_000.0).round() as u64
}

/// The confirm a paying customer sends for `hold`.
pub fn confirm(resource: &ResourceId, hold: &CommandId) -> CommandBody {
    CommandBody::Confirm {
        command_id: CommandId::try_from(format!("{hold}-k")).expect("short id"),
        resource_id: resource.clone(),
        hold_id: hold.clone(),
    }
}

/// Late buyers, one seat each, for the seats that came back.
pub fn late_buyers(resource: &ResourceId, n: usize) -> Vec<CommandBody> {
    (0..n)
        .map(|i| CommandBody::Reserve {
            command_id: CommandId::try_from(format!("{resource}-late{i}")).expect("short id"),
            resource_id: resource.clone(),
            customer_id: CustomerId::try_from(format!("late-{i}")).expect("short id"),
            quantity: 1,
        })
        .collect()
}
