//! Settling deliveries: acks coalesced with the `multiple` flag.
//!
//! Delivery tags on a channel count up from 1. Commands finish out of order
//! (different resources, different batches), so each decision (ack or
//! requeue) goes to one [`Coalescer`] per channel, which acks every
//! contiguous run of finished tags in a single `basic.ack multiple=true` frame
//! and sends requeues individually, in tag order, so a multiple ack never
//! covers a delivery that must be requeued.
//!
//! A delivery that takes long to finish would hold back the acks of all
//! later ones. When more than a threshold of finished deliveries wait behind
//! an unfinished one, they are settled one by one instead, and the run
//! resumes after them.

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use tracing::warn;

/// What to do with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Done: remove it from the queue.
    Ack,
    /// Not done: put it back for another try.
    Requeue,
}

/// A frame to send to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// `basic.ack` of every unsettled tag up to and including this one.
    AckUpTo(u64),
    /// `basic.ack` of this tag only.
    Ack(u64),
    /// `basic.nack requeue=true` of this tag only.
    Requeue(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Decided(Decision),
    /// Settled on its own already; a multiple ack must stop before it.
    Sent,
}

/// Turns per-delivery decisions into as few frames as possible. Pure.
#[derive(Debug)]
pub struct Coalescer {
    /// The lowest tag not yet settled.
    next: u64,
    slots: BTreeMap<u64, Slot>,
    /// Finished deliveries allowed to wait behind an unfinished one.
    max_waiting: usize,
}

impl Coalescer {
    /// A coalescer for a fresh channel (first tag 1).
    pub fn new(max_waiting: usize) -> Coalescer {
        Coalescer {
            next: 1,
            slots: BTreeMap::new(),
            max_waiting: max_waiting.max(1),
        }
    }

    /// Records a decision and returns the frames that can be sent now.
    pub fn decide(&mut self, tag: u64, decision: Decision) -> Vec<Frame> {
        if tag < self.next {
            return Vec::new();
        }
        self.slots.insert(tag, Slot::Decided(decision));
        let mut frames = Vec::new();
        let mut ack_to = None;
        while let Some(slot) = self.slots.remove(&self.next) {
            match slot {
                Slot::Decided(Decision::Ack) => ack_to = Some(self.next),
                Slot::Decided(Decision::Requeue) => {
                    frames.extend(ack_to.take().map(Frame::AckUpTo));
                    frames.push(Frame::Requeue(self.next));
                }
                Slot::Sent => frames.extend(ack_to.take().map(Frame::AckUpTo)),
            }
            self.next += 1;
        }
        frames.extend(ack_to.map(Frame::AckUpTo));
        let waiting = self
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Decided(_)))
            .count();
        if waiting > self.max_waiting {
            frames.extend(self.settle_waiting_one_by_one());
        }
        frames
    }

    /// Everything decided, settled one by one (for a channel going away).
    pub fn finish(&mut self) -> Vec<Frame> {
        self.settle_waiting_one_by_one()
    }

    fn settle_waiting_one_by_one(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        for (tag, slot) in self.slots.iter_mut() {
            if let Slot::Decided(d) = *slot {
                frames.push(match d {
                    Decision::Ack => Frame::Ack(*tag),
                    Decision::Requeue => Frame::Requeue(*tag),
                });
                *slot = Slot::Sent;
            }
        }
        frames
    }
}

/// Sends decisions to the channel's settling task.
#[derive(Clone)]
pub struct Settler {
    tx: mpsc::UnboundedSender<(u64, Decision)>,
}

impl Settler {
    /// Starts the settling task for `channel`; it ends, after settling all
    /// it was told, once every [`Settler`] clone is dropped.
    pub fn spawn(channel: Channel, max_waiting: usize) -> (Settler, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Decision)>();
        let task = tokio::spawn(async move {
            let mut coalescer = Coalescer::new(max_waiting);
            while let Some((tag, decision)) = rx.recv().await {
                let mut frames = coalescer.decide(tag, decision);
                // Take whatever else is ready, so one frame covers it all.
                while let Ok((tag, decision)) = rx.try_recv() {
                    frames = merge(frames, coalescer.decide(tag, decision));
                }
                send(&channel, &frames).await;
            }
            send(&channel, &coalescer.finish()).await;
        });
        (Settler { tx }, task)
    }

    /// Records a decision; the frame goes out as soon as its turn comes.
    pub fn settle(&self, tag: u64, decision: Decision) {
        // The task only stops once all senders are gone.
        let _ = self.tx.send((tag, decision));
    }
}

/// Appends `more`, folding consecutive multiple acks into the last one.
fn merge(mut frames: Vec<Frame>, more: Vec<Frame>) -> Vec<Frame> {
    for f in more {
        match (frames.last_mut(), f) {
            (Some(Frame::AckUpTo(last)), Frame::AckUpTo(t)) => *last = t,
            _ => frames.push(f),
        }
    }
    frames
}

async fn send(channel: &Channel, frames: &[Frame]) {
    for frame in frames {
        let result = match *frame {
            Frame::AckUpTo(tag) => {
                metrics::counter!(crate::metrics::ACK_FRAMES).increment(1);
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await
            }
            Frame::Ack(tag) => {
                metrics::counter!(crate::metrics::ACK_FRAMES).increment(1);
                channel
                    .basic_ack(tag, BasicAckOptions { multiple: false })
                    .await
            }
            Frame::Requeue(tag) => {
                channel
                    .basic_nack(
                        tag,
                        BasicNackOptions {
                            multiple: false,
                            requeue: true,
                        },
                    )
                    .await
            }
        };
        if let Err(e) = result {
            // The channel is gone: the broker redelivers what was not
            // acked, and the idempotency records make that harmless.
            warn!(error = %e, ?frame, "could not settle; the broker will redeliver");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Decision::{Ack, Requeue};
    use super::*;

    #[test]
    fn in_order_acks_become_one_multiple_ack_each() {
        let mut c = Coalescer::new(100);
        assert_eq!(c.decide(1, Ack), vec![Frame::AckUpTo(1)]);
        assert_eq!(c.decide(2, Ack), vec![Frame::AckUpTo(2)]);
    }

    #[test]
    fn out_of_order_acks_wait_for_the_gap_then_go_together() {
        let mut c = Coalescer::new(100);
        assert_eq!(c.decide(2, Ack), vec![]);
        assert_eq!(c.decide(3, Ack), vec![]);
        assert_eq!(c.decide(1, Ack), vec![Frame::AckUpTo(3)]);
    }

    #[test]
    fn a_requeue_splits_the_run_and_is_never_covered_by_a_multiple_ack() {
        let mut c = Coalescer::new(100);
        c.decide(2, Requeue);
        c.decide(3, Ack);
        assert_eq!(
            c.decide(1, Ack),
            vec![Frame::AckUpTo(1), Frame::Requeue(2), Frame::AckUpTo(3)]
        );
    }

    #[test]
    fn too_many_waiting_behind_a_slow_one_are_settled_alone() {
        let mut c = Coalescer::new(2);
        assert_eq!(c.decide(2, Ack), vec![]);
        assert_eq!(c.decide(3, Requeue), vec![]);
        assert_eq!(
            c.decide(4, Ack),
            vec![Frame::Ack(2), Frame::Requeue(3), Frame::Ack(4)]
        );
        // When the slow one finishes, the run must not cover 2..=4 again.
        assert_eq!(c.decide(1, Ack), vec![Frame::AckUpTo(1)]);
        assert_eq!(c.decide(5, Ack), vec![Frame::AckUpTo(5)]);
    }

    #[test]
    fn finish_settles_what_waits_behind_a_gap() {
        let mut c = Coalescer::new(100);
        c.decide(2, Ack);
        c.decide(4, Requeue);
        assert_eq!(c.finish(), vec![Frame::Ack(2), Frame::Requeue(4)]);
        assert_eq!(c.finish(), vec![]);
    }

    #[test]
    fn merge_folds_consecutive_multiple_acks() {
        assert_eq!(
            merge(vec![Frame::AckUpTo(1)], vec![Frame::AckUpTo(5)]),
            vec![Frame::AckUpTo(5)]
        );
        assert_eq!(
            merge(vec![Frame::Requeue(1)], vec![Frame::AckUpTo(5)]),
            vec![Frame::Requeue(1), Frame::AckUpTo(5)]
        );
    }
}
