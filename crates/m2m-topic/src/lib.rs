//! MQTT topic names, topic filters and shared subscriptions, and the two trees that match them.
//!
//! # Layout
//! - [`TopicName`] and [`TopicFilter`]: newtypes over `Arc<str>`, validated at construction
//!   (MQTT 5.0 §4.7, 3.1.1 §4.7), with [`Limits`] for a broker's extra bounds on length and levels.
//! - [`Subscription`], [`SharedFilter`] and [`parse_subscription`]: `$share/{group}/{filter}`
//!   (MQTT 5.0 §4.8.2).
//! - [`SubscriptionTrie`]: filters → subscribers; matched against the topic of every PUBLISH, the hot
//!   path, without allocating.
//! - [`TopicTree`]: topic names → values (retained messages); matched against a filter on SUBSCRIBE.
//!
//! # Matching rules
//! `+` matches exactly one level, an empty one included; `#` matches the rest of the topic, zero
//! levels included (`"a/#"` matches `"a"`); other levels compare as exact strings. Topics starting with
//! `$` are not matched by filters whose first level is `+` or `#` (§4.7.2), so `"#"` does not see
//! `"$SYS/x"` but `"$SYS/#"` does. [`TopicFilter::matches`] states the rules for one pair; both trees
//! agree with it.
//!
//! # What this crate does not do
//! It knows nothing of clients, QoS or subscription options: those are the caller's `K` and `V`. It
//! does not pick the member of a shared group that receives a message (the caller keeps a round-robin
//! cursor per [`SharedGroupId`]) and does not merge a client's overlapping subscriptions.
//!
//! ```
//! use m2m_topic::{parse_subscription, SubscriptionTrie, TopicName};
//!
//! let mut trie = SubscriptionTrie::new();
//! trie.insert(&parse_subscription("sensors/+/temp")?, "dashboard", 0);
//! trie.insert(&parse_subscription("$share/alarms/sensors/#")?, "worker-1", 1);
//! trie.insert(&parse_subscription("$share/alarms/sensors/#")?, "worker-2", 1);
//!
//! let (mut plain, mut groups) = (Vec::new(), Vec::new());
//! trie.match_topic(
//!     &TopicName::try_from("sensors/kitchen/temp")?,
//!     |client, _qos| plain.push(*client),
//!     |group, members| groups.push((group.as_str().to_owned(), members.len())),
//! );
//! assert_eq!(plain, ["dashboard"]);
//! assert_eq!(groups, [("$share/alarms/sensors/#".to_owned(), 2)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod filter;
mod limits;
mod name;
mod shared;
mod tree;
mod trie;

#[cfg(test)]
mod test_support;

pub use error::TopicError;
pub use filter::TopicFilter;
pub use limits::{Limits, MAX_TOPIC_LEN};
pub use name::TopicName;
pub use shared::{parse_subscription, SharedFilter, SharedGroupId, Subscription};
pub use tree::TopicTree;
pub use trie::{Match, SubscriptionTrie};

/// The error type of this crate.
pub type Error = TopicError;

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = TopicError> = std::result::Result<T, E>;

/// Trait impls shared by the `Arc<str>` newtypes: string access, `Display` and `FromStr`.
macro_rules! str_newtype_impls {
    ($ty:ident) => {
        impl std::ops::Deref for $ty {
            type Target = str;

            fn deref(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        /// Hashes and compares like the `str`, so maps keyed by this type can be queried with a `&str`.
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::TopicError;

            fn from_str(s: &str) -> Result<Self, $crate::TopicError> {
                Self::try_from(s)
            }
        }
    };
}
pub(crate) use str_newtype_impls;
