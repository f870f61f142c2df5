//! Connection URLs whose passwords never show.

use serde::{Deserialize, Serialize, Serializer};
use std::fmt;

/// A connection URL, or a comma-separated list of them, that never shows
/// its password: `Debug`, `Display` and `Serialize` print
/// `scheme://user:***@host...`. Only [`SecretUrl::expose`] gives the URL
/// as configured, for the code that connects.
#[derive(Clone, PartialEq, Eq, Hash, Deserialize)]
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

    /// Each URL of a comma-separated list, trimmed; a single URL is a list
    /// of one. A comma separates two URLs only where the next one starts
    /// with its `scheme://`: a comma inside a URL (in a password, a query)
    /// stays in that URL, so it is never cut in two and half shown.
    pub fn split(&self) -> Vec<SecretUrl> {
        let urls: Vec<SecretUrl> = pieces(&self.0)
            .into_iter()
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(SecretUrl::new)
            .collect();
        if urls.is_empty() {
            // Nothing but commas and blanks: the client says what is wrong.
            vec![self.clone()]
        } else {
            urls
        }
    }

    /// The URL with every password replaced by `***` (each URL of a list).
    pub fn redacted(&self) -> String {
        pieces(&self.0)
            .into_iter()
            .map(redact_one)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The URLs of a comma-separated list, as written (untrimmed): the text is
/// cut at a comma only when what follows starts with a URL scheme.
fn pieces(list: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (comma, _) in list.match_indices(',') {
        if starts_with_scheme(&list[comma + 1..]) {
            pieces.push(&list[start..comma]);
            start = comma + 1;
        }
    }
    pieces.push(&list[start..]);
    pieces
}

/// Whether `s` starts (after blanks) with `scheme://`, where a scheme is a
/// letter followed by letters, digits, `+`, `-` or `.` (RFC 3986).
fn starts_with_scheme(s: &str) -> bool {
    let s = s.trim_start();
    let Some(end) = s.find("://") else {
        return false;
    };
    let mut scheme = s[..end].chars();
    scheme.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// One URL without its password. Userinfo without a `:` is hidden whole,
/// since some clients read a lone userinfo as the password; text without a
/// scheme is read as starting with its authority, so `user:pass@host`
/// shows no password either, nor does a scheme-less URL after a comma.
fn redact_one(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = url[..scheme_end].to_string();
    match authority.rfind('@') {
        Some(at) => {
            match authority[..at].split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:***")),
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    // A comma after the authority may start a URL written without its
    // scheme (a malformed list): its userinfo is hidden as well.
    let mut parts = tail.split(',');
    out.push_str(parts.next().unwrap_or_default());
    for part in parts {
        out.push(',');
        out.push_str(&redact_one(part));
    }
    out
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
    fn a_comma_in_a_password_or_a_query_stays_in_its_url() {
        let url =
            SecretUrl::new("amqp://u:pa,ss@a:5672/v?x=1,2, amqp://u:p,2@b:5672/v,amqps://c/%2f");
        assert_eq!(
            url.to_string(),
            "amqp://u:***@a:5672/v?x=1,2, amqp://u:***@b:5672/v,amqps://c/%2f"
        );
        let split: Vec<String> = url.split().iter().map(|u| u.expose().to_string()).collect();
        assert_eq!(
            split,
            [
                "amqp://u:pa,ss@a:5672/v?x=1,2",
                "amqp://u:p,2@b:5672/v",
                "amqps://c/%2f"
            ]
        );
        for (one, password) in url.split().iter().zip(["pa,ss", "p,2"]) {
            assert!(!one.to_string().contains(password), "{one}");
            assert!(!format!("{one:?}").contains(password), "{one:?}");
        }
    }

    #[test]
    fn one_url_splits_into_itself_and_blanks_between_urls_go() {
        let one = "amqp://guest:guest@127.0.0.1:5672/%2f";
        assert_eq!(SecretUrl::new(one).split(), [SecretUrl::new(one)]);
        assert_eq!(
            SecretUrl::new(" amqp://a/v ,amqp://b/v,").split(),
            [SecretUrl::new("amqp://a/v"), SecretUrl::new("amqp://b/v,")],
            "a trailing comma belongs to the last URL (the client rejects it)"
        );
        assert_eq!(SecretUrl::new("  ").split(), [SecretUrl::new("  ")]);
    }

    #[test]
    fn a_url_without_a_scheme_shows_no_password_either() {
        assert_eq!(
            SecretUrl::new("u:pw@h:5672/v").to_string(),
            "u:***@h:5672/v"
        );
        assert_eq!(
            SecretUrl::new("amqp://u:p1@a/v,u:p2@b/v").to_string(),
            "amqp://u:***@a/v,u:***@b/v",
            "a URL without its scheme after a comma"
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
