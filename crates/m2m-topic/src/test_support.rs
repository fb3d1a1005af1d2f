//! Proptest strategies over small alphabets, so that random names and filters collide often.

use proptest::prelude::*;

use crate::{Subscription, TopicFilter, TopicName};

/// Topic levels: plain, empty, and `$`-prefixed (which matters at the first level).
const TOPIC_LEVELS: &[&str] = &["a", "b", "", "$s"];
/// Filter levels: the topic levels and `+`; `#` is appended separately.
const FILTER_LEVELS: &[&str] = &["a", "b", "", "$s", "+"];

pub(crate) fn topic() -> impl Strategy<Value = TopicName> {
    prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..=4)
        .prop_filter_map("an empty string is no topic", |levels| TopicName::try_from(levels.join("/")).ok())
}

pub(crate) fn filter() -> impl Strategy<Value = TopicFilter> {
    (prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..=4), any::<bool>()).prop_filter_map(
        "an empty string is no filter",
        |(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            TopicFilter::try_from(levels.join("/")).ok()
        },
    )
}

pub(crate) fn subscription() -> impl Strategy<Value = Subscription> {
    (filter(), prop::option::weighted(0.3, prop::sample::select(&["g", "h"][..]))).prop_map(
        |(filter, group)| match group {
            Some(group) => {
                Subscription::Shared(crate::SharedFilter::new(group, filter).expect("valid group"))
            }
            None => Subscription::Plain(filter),
        },
    )
}
