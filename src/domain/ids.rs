//! Identifier newtypes: a value of one of these is a valid id by construction.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Longest id the contract allows, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Zero characters.
    #[error("must not be empty")]
    Empty,
    /// More than [`MAX_ID_CHARS`] characters.
    #[error("is {0} characters long; at most 128 are allowed")]
    TooLong(usize),
    /// A control character (newline, NUL, ...).
    #[error("contains a non-printable character")]
    NotPrintable,
}

fn validate(s: &str) -> Result<(), IdError> {
    let chars = s.chars().count();
    if chars == 0 {
        Err(IdError::Empty)
    } else if chars > MAX_ID_CHARS {
        Err(IdError::TooLong(chars))
    } else if s.chars().any(char::is_control) {
        Err(IdError::NotPrintable)
    } else {
        Ok(())
    }
}

/// The JSON Schema of every id: what [`validate`] accepts. JSON Schema
/// counts `maxLength` in code points, as `validate` does; the pattern
/// excludes the control characters (`char::is_control`, Unicode `Cc`).
fn id_schema() -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_CHARS,
        "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
    })
}

/// What an expiry's id starts with: `expire:<hold id>` (contract v2).
pub const EXPIRY_PREFIX: &str = "expire:";

/// A command id: an id, or the id of a hold's expiry, `expire:<hold id>`,
/// which may be that prefix longer.
fn validate_command_id(s: &str) -> Result<(), IdError> {
    match s.strip_prefix(EXPIRY_PREFIX) {
        Some(hold) if validate(hold).is_ok() => Ok(()),
        _ => validate(s),
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $validate:ident) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: a decision hands the same id to its event,
        /// its record, its holdings and its keys, and a clone is a
        /// reference count, not an allocation.
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $validate(&s)?;
                Ok(Self(s.into()))
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                // Checked before the copy: a megabyte-long candidate read
                // from a command body is refused without being copied.
                $validate(s)?;
                Ok(Self(s.into()))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <Cow<'de, str>>::deserialize(d)?;
                Self::try_from(s.as_ref()).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                id_schema()
            }
        }
    };
}

id_type!(
    /// A command's idempotency key; also names the reservation a reserve
    /// (or the hold a hold) makes.
    CommandId,
    validate_command_id
);
id_type!(
    /// A resource (an aggregate: a concert, a screening, a restaurant service).
    ResourceId,
    validate
);
id_type!(
    /// A customer, for the per-customer limit.
    CustomerId,
    validate
);
id_type!(
    /// A budget: a cap on what one customer spends across the resources
    /// that name it (contract v2).
    BudgetId,
    validate
);

impl CommandId {
    /// The id of `hold`'s expiry: `expire:<hold id>`.
    pub fn expiry_of(hold: &CommandId) -> CommandId {
        CommandId(format!("{EXPIRY_PREFIX}{hold}").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_printable_ids_up_to_128_chars() {
        assert!(CommandId::try_from("c-1").is_ok());
        assert!(CommandId::try_from("é".repeat(128)).is_ok());
        assert!(ResourceId::try_from("concert 42 / row A").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_control_ids() {
        assert_eq!(CommandId::try_from(""), Err(IdError::Empty));
        assert_eq!(
            CommandId::try_from("x".repeat(129)),
            Err(IdError::TooLong(129))
        );
        assert_eq!(CustomerId::try_from("a\nb"), Err(IdError::NotPrintable));
        // Borrowed candidates get the same verdicts as owned ones.
        assert_eq!(
            ResourceId::try_from("x".repeat(129).as_str()),
            Err(IdError::TooLong(129))
        );
        assert_eq!(
            CustomerId::try_from(String::from("a\u{0}b")),
            Err(IdError::NotPrintable)
        );
    }

    #[test]
    fn an_expirys_id_may_be_its_prefix_longer() {
        let hold = CommandId::try_from("h".repeat(128)).unwrap();
        let expiry = CommandId::expiry_of(&hold);
        assert_eq!(expiry.as_str().len(), 135);
        assert_eq!(CommandId::try_from(expiry.as_str()), Ok(expiry));
        assert!(CommandId::try_from(format!("expire:{}", "h".repeat(129))).is_err());
        assert!(CommandId::try_from(format!("other:{}", "h".repeat(128))).is_err());
    }

    #[test]
    fn deserialising_validates() {
        assert!(serde_json::from_str::<ResourceId>("\"\"").is_err());
        assert!(serde_json::from_str::<ResourceId>("\"r\"").is_ok());
    }
}
