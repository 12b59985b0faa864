//! The provider's settings: the operator's `settings` table, as strings.

use std::fmt;
use std::str::FromStr;

use crate::KmsError;

/// The operator's settings for this provider, read from the host
/// (`wasi:config/store`) once per instance, when its provider is made:
/// they never change while an instance lives.
///
/// Every error names the setting but does not quote its value, which may be
/// key material (a parse error carries `T::Err`'s message, which for the
/// standard library's types does not quote the input either); for the same
/// reason `Debug` shows the names only.
/// Credentials are not settings: see [`crate::http::Request::secret_header`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Settings {
    values: Vec<(String, String)>,
}

impl Settings {
    /// Settings from (name, value) pairs, for native tests of a provider;
    /// in a component they come from the host.
    pub fn from_pairs<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> Settings
    where
        N: Into<String>,
        V: Into<String>,
    {
        Settings {
            values: pairs
                .into_iter()
                .map(|(name, value)| (name.into(), value.into()))
                .collect(),
        }
    }

    /// Reads every setting from the host.
    pub(crate) fn load() -> Result<Settings, KmsError> {
        use crate::wit::wasi::config::store;
        match store::get_all() {
            Ok(values) => Ok(Settings { values }),
            Err(store::Error::Upstream(why) | store::Error::Io(why)) => Err(
                KmsError::InvalidConfig(format!("reading the settings: {why}")),
            ),
        }
    }

    /// The value of setting `name`, as given (not trimmed), if it is set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// The value of setting `name`; `invalid-config` ("setting `name` is
    /// missing") if it is not set. An empty value counts as set.
    pub fn require(&self, name: &str) -> Result<&str, KmsError> {
        self.get(name)
            .ok_or_else(|| KmsError::InvalidConfig(format!("setting `{name}` is missing")))
    }

    /// Setting `name` parsed as a `T` (surrounding whitespace ignored);
    /// `invalid-config` if it is missing or does not parse.
    pub fn parse<T>(&self, name: &str) -> Result<T, KmsError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        parse_value(name, self.require(name)?)
    }

    /// Setting `name` parsed as a `T` (surrounding whitespace ignored), or
    /// `default` if it is not set; `invalid-config` if it does not parse.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, KmsError>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        match self.get(name) {
            Some(value) => parse_value(name, value),
            None => Ok(default),
        }
    }
}

fn parse_value<T>(name: &str, value: &str) -> Result<T, KmsError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| KmsError::InvalidConfig(format!("setting `{name}`: {e}")))
}

/// Names only: a value may be key material.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.values.iter().map(|(name, _)| name))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from_pairs([("port", " 8200 "), ("key", "c2VjcmV0"), ("empty", "")])
    }

    fn names_setting(error: KmsError, name: &str) {
        match error {
            KmsError::InvalidConfig(m) => assert!(m.contains(&format!("`{name}`")), "{m}"),
            other => panic!("expected invalid-config, got {other:?}"),
        }
    }

    #[test]
    fn get_and_require_return_values_as_given() {
        let s = settings();
        assert_eq!(s.get("port"), Some(" 8200 "));
        assert_eq!(s.get("nope"), None);
        assert_eq!(s.require("empty"), Ok(""));
        names_setting(s.require("nope").unwrap_err(), "nope");
    }

    #[test]
    fn parse_trims_and_names_the_setting_without_quoting_it() {
        let s = settings();
        assert_eq!(s.parse::<u16>("port"), Ok(8200));
        assert_eq!(s.parse_or("nope", 7u16), Ok(7));
        assert_eq!(s.parse_or("port", 7u16), Ok(8200));
        names_setting(s.parse::<u16>("nope").unwrap_err(), "nope");
        let error = s.parse_or::<u16>("key", 7).unwrap_err();
        assert!(!format!("{error:?}").contains("c2VjcmV0"), "{error:?}");
        names_setting(error, "key");
    }

    #[test]
    fn debug_shows_names_only() {
        let shown = format!("{:?}", settings());
        assert!(
            shown.contains("key") && !shown.contains("c2VjcmV0"),
            "{shown}"
        );
    }
}
