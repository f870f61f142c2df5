//! Connection URLs whose passwords never show.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A connection URL, or a comma-separated list of them, that never shows
/// its password: `Debug`, `Display` and `Serialize` print
/// `scheme://user:***@host...`. Only [`SecretUrl::expose`] gives the URL
/// as configured, for the code that connects.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL (or a comma-separated list).
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The URL as configured, password included: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with every password replaced by `***`.
    pub fn redacted(&self) -> String {
        self.0
            .split(',')
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One URL without its password. Userinfo without a `:` is hidden whole,
/// since some clients read a lone userinfo as the password.
fn redact_one(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    let shown = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_string(),
    };
    format!("{}{shown}{}", &url[..scheme_end], &rest[at..])
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_everywhere_it_prints() {
        let url = SecretUrl::new("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        let shown = "amqp://guest:***@127.0.0.1:5672/%2f";
        assert_eq!(url.to_string(), shown);
        assert_eq!(format!("{url:?}"), format!("SecretUrl({shown:?})"));
        assert_eq!(serde_json::to_string(&url).unwrap(), format!("{shown:?}"));
        assert_eq!(url.expose(), "amqp://guest:s3cret@127.0.0.1:5672/%2f");
    }

    #[test]
    fn every_url_of_a_list_is_redacted() {
        let url =
            SecretUrl::new("amqps://u:p1@a:5671/v,amqps://u:p2@b:5671/v?heartbeat=5,amqp://c/%2f");
        let shown = url.to_string();
        assert_eq!(
            shown,
            "amqps://u:***@a:5671/v,amqps://u:***@b:5671/v?heartbeat=5,amqp://c/%2f"
        );
    }

    #[test]
    fn urls_without_a_password_stay_as_they_are_and_lone_userinfo_is_hidden() {
        for plain in ["redis://127.0.0.1:6379/0", "not a url", "redis://h/0?x=a@b"] {
            assert_eq!(SecretUrl::new(plain).to_string(), plain);
        }
        assert_eq!(
            SecretUrl::new("redis://token@h:6379").to_string(),
            "redis://***@h:6379"
        );
        assert_eq!(
            SecretUrl::new("redis://:pw@h:6379/0").to_string(),
            "redis://:***@h:6379/0"
        );
    }
}
