//! Fuzzes `message::decode` with arbitrary bodies: it must never panic, and
//! what it accepts must be coherent. An invalid command is hashed raw; a
//! valid one, written back as its canonical `CommandBody`, decodes to the
//! same command and hash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reservation_worker::domain::{Action, BudgetChange, LimitChange};
use reservation_worker::message::{CommandBody, decode};
use sha2::{Digest, Sha256};

fuzz_target!(|body: &[u8]| {
    let Ok(submission) = decode(body) else {
        return;
    };
    let command = &submission.command;
    let (command_id, resource_id) = (command.command_id.clone(), command.resource_id.clone());
    // Built here from the public types rather than by the decoder's own
    // helper, so the check does not trust the code it checks.
    let canonical = match &command.action {
        Action::Invalid { .. } => {
            assert_eq!(&*submission.body_hash, hex::encode(Sha256::digest(body)));
            return;
        }
        Action::Define {
            capacity,
            per_customer_limit,
            price,
            budget,
        } => CommandBody::Define {
            command_id,
            resource_id,
            capacity: *capacity,
            per_customer_limit: match per_customer_limit {
                LimitChange::Keep => None,
                LimitChange::Remove => Some(None),
                LimitChange::Set(n) => Some(Some(*n)),
            },
            price: *price,
            budget_id: match budget {
                BudgetChange::Keep => None,
                BudgetChange::Detach => Some(None),
                BudgetChange::Attach(b) => Some(Some(b.clone())),
            },
        },
        Action::Reserve {
            customer_id,
            quantity,
        } => CommandBody::Reserve {
            command_id,
            resource_id,
            customer_id: customer_id.clone(),
            quantity: *quantity,
        },
        Action::Cancel { reservation_id } => CommandBody::Cancel {
            command_id,
            resource_id,
            reservation_id: reservation_id.clone(),
        },
        Action::Hold {
            customer_id,
            quantity,
            hold_secs,
        } => CommandBody::Hold {
            command_id,
            resource_id,
            customer_id: customer_id.clone(),
            quantity: *quantity,
            hold_secs: *hold_secs,
        },
        Action::Confirm { hold_id } => CommandBody::Confirm {
            command_id,
            resource_id,
            hold_id: hold_id.clone(),
        },
    };
    let json = canonical.to_json();
    let again = decode(&json).expect("a canonical body decodes");
    assert_eq!(again, submission, "{}", String::from_utf8_lossy(&json));
    assert_eq!(&*again.body_hash, hex::encode(Sha256::digest(&json)));
});
