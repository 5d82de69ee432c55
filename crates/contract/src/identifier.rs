//! The identifiers that cross a boundary, as types: [`CustomerId`] and [`Sku`]. One rule
//! ([`check_identifier`]) for both, checked wherever one is made from text: by order-api when an
//! order comes in, by the worker when it decodes one (a message may come from anywhere), and by
//! the stock API for its path. A value of either type has passed it, so no code past the
//! boundary checks again.
//!
//! In JSON both are plain strings (`"WIDGET-1"`); reading one that breaks the rule fails with
//! the rule's own words.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The rule for identifiers (customer IDs, SKUs): 1 to 64 characters from `A-Z a-z 0-9 . _ -`,
/// at least one of them a letter or digit (so `.` and `..`, which mean something else in a URL
/// path, are not identifiers).
pub fn check_identifier(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        Err("must not be empty")
    } else if value.len() > 64 {
        Err("must be at most 64 characters")
    } else if !value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
        Err("may contain only letters, digits, '.', '_' and '-'")
    } else if !value.chars().any(|c| c.is_ascii_alphanumeric()) {
        Err("must contain a letter or a digit")
    } else {
        Ok(())
    }
}

/// Declares a string newtype that only [`check_identifier`] can make.
macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The value, if it follows [`check_identifier`]; else the rule it breaks.
            pub fn parse(value: impl Into<String>) -> Result<Self, &'static str> {
                let value = value.into();
                check_identifier(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = &'static str;

            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        /// As the string it is (`"WIDGET-1"`): messages quote an identifier with `{:?}`.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

identifier! {
    /// A customer's ID, as a client sends it in an order (`customer_id`).
    CustomerId
}

identifier! {
    /// A stock-keeping unit: what an order item names and the stock API keeps a level of.
    Sku
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_short_plain_and_not_path_segments() {
        assert_eq!(check_identifier("WIDGET-1"), Ok(()));
        assert_eq!(check_identifier("c.42_x"), Ok(()));
        assert!(check_identifier("").is_err());
        assert!(check_identifier(&"x".repeat(65)).is_err());
        assert!(check_identifier("a b").is_err());
        assert!(check_identifier("..").is_err());
    }

    #[test]
    fn the_types_follow_the_rule_and_are_plain_strings_in_json() {
        assert_eq!(Sku::parse("WIDGET-1").unwrap(), "WIDGET-1");
        assert_eq!(Sku::parse("a b"), Err("may contain only letters, digits, '.', '_' and '-'"));
        assert_eq!(CustomerId::parse(""), Err("must not be empty"));
        assert_eq!(format!("{:?}", Sku::parse("A").unwrap()), r#""A""#);
        let sku: Sku = serde_json::from_str(r#""WIDGET-1""#).unwrap();
        assert_eq!(serde_json::to_string(&sku).unwrap(), r#""WIDGET-1""#);
        let err = serde_json::from_str::<Sku>(r#""..""#).unwrap_err();
        assert!(err.to_string().starts_with("must contain a letter or a digit"), "{err}");
    }
}
