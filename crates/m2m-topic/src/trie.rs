//! [`SubscriptionTrie`]: topic filters → subscribers, matched against one topic name per PUBLISH.
//!
//! One node per filter level, reached from its parent through a literal map, a `+` slot or (for the
//! last level) a `#` slot. Matching a topic walks only the branches whose levels agree with it, so its
//! cost follows the topic's depth and the number of matching filters, not the number of filters.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::mem;

use crate::limits::split_level;
use crate::{SharedFilter, SharedGroupId, Subscription, TopicFilter, TopicName};

/// A subscription trie: topic filters → subscribers.
///
/// `K` identifies a subscriber (a client id, say `Arc<str>`), `V` is the per-subscription data (the
/// subscription options). A subscriber holds at most one entry per [`Subscription`]: inserting the same
/// (subscription, key) again replaces the value. A plain filter and a shared subscription on the same
/// filter are different subscriptions.
///
/// Nothing here recurses on the depth of a filter or topic, so a hostile 30 000-level filter costs
/// memory, not the stack.
pub struct SubscriptionTrie<K, V> {
    /// Never holds a subscription itself: every filter has at least one level.
    root: Node<K, V>,
    /// Number of (subscription, key) entries, shared group members included.
    len: usize,
}

struct Node<K, V> {
    /// Children reached through a literal level.
    literal: HashMap<Box<str>, Node<K, V>>,
    /// Child reached through a `+` level.
    plus: Option<Box<Node<K, V>>>,
    /// Subscriptions whose filter is this node's path followed by `#`.
    hash: Option<Box<Leaf<K, V>>>,
    /// Subscriptions whose filter ends at this node.
    here: Option<Box<Leaf<K, V>>>,
}

/// The subscriptions of one filter; never empty while it is in the trie.
struct Leaf<K, V> {
    plain: Members<K, V>,
    /// One entry per group name; no group is empty.
    shared: Vec<SharedGroup<K, V>>,
}

struct SharedGroup<K, V> {
    id: SharedGroupId,
    /// In insertion order, so that the caller's round robin is fair.
    members: Members<K, V>,
}

/// One subscription, or one shared group, that matches a topic; see
/// [`SubscriptionTrie::for_each_match`].
#[derive(Debug)]
pub enum Match<'a, K, V> {
    /// A plain subscription: the subscriber and its value.
    Plain(&'a K, &'a V),
    /// A shared group: its identity and its members in insertion order (never empty); the caller
    /// delivers to one of them.
    Shared(&'a SharedGroupId, &'a [(K, V)]),
}

impl<K, V> Clone for Match<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Match<'_, K, V> {}

/// Above this many entries, a [`Members`] list keeps a hash index of its keys.
const INDEX_THRESHOLD: usize = 32;

/// (key, value) pairs in a `Vec`, the fastest to iterate when delivering, with a key index once the
/// list is long enough for linear search on subscribe and unsubscribe to hurt.
struct Members<K, V> {
    entries: Vec<(K, V)>,
    /// key → position in `entries`; built above [`INDEX_THRESHOLD`], dropped below half of it.
    index: Option<HashMap<K, usize>>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Self { literal: HashMap::new(), plus: None, hash: None, here: None }
    }
}

impl<K, V> Node<K, V> {
    fn child(&self, level: &str) -> Option<&Self> {
        if level == "+" {
            self.plus.as_deref()
        } else {
            self.literal.get(level)
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Self> {
        if level == "+" {
            self.plus.as_deref_mut()
        } else {
            self.literal.get_mut(level)
        }
    }

    fn child_or_insert(&mut self, level: &str) -> &mut Self {
        if level == "+" {
            return self.plus.get_or_insert_with(Box::default);
        }
        // `entry` would allocate the key even when the child exists; look up first.
        if !self.literal.contains_key(level) {
            self.literal.insert(level.into(), Self::default());
        }
        self.literal.get_mut(level).expect("child was just inserted")
    }

    fn child_count(&self) -> usize {
        self.literal.len() + usize::from(self.plus.is_some())
    }

    /// Whether nothing ends at this node (its children aside).
    fn is_bare(&self) -> bool {
        self.here.is_none() && self.hash.is_none()
    }

    /// The node at `path` below this one (`None` path: this node itself).
    fn descend(&self, path: Option<&str>) -> Option<&Self> {
        let mut node = self;
        for level in path.into_iter().flat_map(|p| p.split('/')) {
            node = node.child(level)?;
        }
        Some(node)
    }

    fn descend_mut(&mut self, path: Option<&str>) -> Option<&mut Self> {
        let mut node = self;
        for level in path.into_iter().flat_map(|p| p.split('/')) {
            node = node.child_mut(level)?;
        }
        Some(node)
    }

    /// Moves the children out into `out`, leaving this node shallow.
    fn take_children(&mut self, out: &mut Vec<Self>) {
        out.extend(self.literal.drain().map(|(_, child)| child));
        if let Some(plus) = self.plus.take() {
            out.push(*plus);
        }
    }
}

/// Drops a subtree without recursion, however deep it is.
fn drop_deep<K, V>(node: Node<K, V>) {
    let mut stack = vec![node];
    while let Some(mut node) = stack.pop() {
        node.take_children(&mut stack);
    }
}

impl<K, V> Leaf<K, V> {
    fn new() -> Self {
        Self { plain: Members::new(), shared: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.plain.entries.is_empty() && self.shared.is_empty()
    }

    fn group_position(&self, group: &str) -> Option<usize> {
        self.shared.iter().position(|g| g.id.group() == group)
    }
}

impl<K, V> Members<K, V> {
    fn new() -> Self {
        Self { entries: Vec::new(), index: None }
    }
}

impl<K: Eq + Hash + Clone, V> Members<K, V> {
    fn position(&self, key: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.position(key).map(|i| &mut self.entries[i].1)
    }

    /// Replaces the value in place (keeping the position) or appends.
    fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(&key) {
            return Some(mem::replace(&mut self.entries[i].1, value));
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), self.entries.len());
        }
        self.entries.push((key, value));
        if self.index.is_none() && self.entries.len() > INDEX_THRESHOLD {
            let index = self.entries.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
            self.index = Some(index);
        }
        None
    }

    /// Removes `key`; `keep_order` shifts the later entries down instead of moving the last one in.
    fn remove(&mut self, key: &K, keep_order: bool) -> Option<V> {
        let i = self.position(key)?;
        let (_, value) = if keep_order { self.entries.remove(i) } else { self.entries.swap_remove(i) };
        if self.entries.len() < INDEX_THRESHOLD / 2 {
            self.index = None;
        } else if let Some(index) = &mut self.index {
            index.remove(key);
            let moved = if keep_order { &self.entries[i..] } else { self.entries.get(i..=i).unwrap_or(&[]) };
            for (offset, (k, _)) in moved.iter().enumerate() {
                if let Some(slot) = index.get_mut(k) {
                    *slot = i + offset;
                }
            }
        }
        if self.entries.is_empty() {
            // Give the memory back: a filter may have had many subscribers once.
            self.entries = Vec::new();
        }
        Some(value)
    }
}

/// Splits a filter into the node path and whether it ends in `#`: `"a/b/#"` → `(Some("a/b"), true)`,
/// `"#"` → `(None, true)` (the root), `"a/+"` → `(Some("a/+"), false)`.
fn path_of(filter: &TopicFilter) -> (Option<&str>, bool) {
    let filter = filter.as_str();
    if filter == "#" {
        (None, true)
    } else if let Some(path) = filter.strip_suffix("/#") {
        (Some(path), true)
    } else {
        (Some(filter), false)
    }
}

fn parts(sub: &Subscription) -> (&TopicFilter, Option<&SharedFilter>) {
    match sub {
        Subscription::Plain(filter) => (filter, None),
        Subscription::Shared(shared) => (&shared.filter, Some(shared)),
    }
}

/// Inline capacity of [`Pending`]: one pending branch per topic level that has both a literal and a
/// `+` child, so deeper than this is rare.
const INLINE_PENDING: usize = 16;

/// A LIFO of branches still to walk; on the stack while short, so that matching does not allocate.
struct Pending<T: Copy> {
    inline: [Option<T>; INLINE_PENDING],
    len: usize,
    /// Holds what does not fit inline; non-empty only while `inline` is full.
    spill: Vec<T>,
}

impl<T: Copy> Pending<T> {
    fn new() -> Self {
        Self { inline: [None; INLINE_PENDING], len: 0, spill: Vec::new() }
    }

    #[inline]
    fn push(&mut self, item: T) {
        if self.len < INLINE_PENDING {
            self.inline[self.len] = Some(item);
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        self.inline[self.len].take()
    }
}

impl<K, V> SubscriptionTrie<K, V> {
    /// An empty trie.
    pub fn new() -> Self {
        Self { root: Node::default(), len: 0 }
    }

    /// Number of (subscription, key) entries, each member of a shared group counted once.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the trie holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Finds every subscription whose filter matches `topic`, without allocating.
    ///
    /// Calls `visit(key, value)` for each matching plain subscription, and
    /// `visit_shared(group, members)` once for each matching shared group, with its members in
    /// insertion order (never empty), so the caller picks one member (round robin, keyed by `group`).
    /// A subscriber with several matching subscriptions is visited once for each; merging them
    /// (MQTT 5.0 §3.3.4) is the caller's business. The order of visits is unspecified.
    ///
    /// When both callbacks need the same mutable state (one delivery list, say), use
    /// [`SubscriptionTrie::for_each_match`], which takes one callback.
    pub fn match_topic<F, G>(&self, topic: &TopicName, mut visit: F, mut visit_shared: G)
    where
        F: FnMut(&K, &V),
        G: FnMut(&SharedGroupId, &[(K, V)]),
    {
        self.for_each_match(topic, |found| match found {
            Match::Plain(key, value) => visit(key, value),
            Match::Shared(group, members) => visit_shared(group, members),
        });
    }

    /// Like [`SubscriptionTrie::match_topic`], with one callback that receives each plain subscription
    /// and each shared group as a [`Match`].
    pub fn for_each_match<F>(&self, topic: &TopicName, mut visit: F)
    where
        F: FnMut(Match<'_, K, V>),
    {
        let mut emit = |leaf: &Leaf<K, V>| {
            for (key, value) in &leaf.plain.entries {
                visit(Match::Plain(key, value));
            }
            for group in &leaf.shared {
                visit(Match::Shared(&group.id, &group.members.entries));
            }
        };
        // Items are (node reached by consuming a level, rest of the topic after that level).
        let mut pending: Pending<(&Node<K, V>, Option<&str>)> = Pending::new();
        let root = &self.root;
        let (level, rest) = split_level(topic.as_str());
        // §4.7.2: a first-level wildcard does not match a topic starting with `$`.
        if !topic.is_system() {
            if let Some(leaf) = &root.hash {
                emit(leaf);
            }
            if let Some(plus) = &root.plus {
                pending.push((plus, rest));
            }
        }
        if let Some(child) = root.literal.get(level) {
            pending.push((child, rest));
        }
        while let Some((node, rest)) = pending.pop() {
            // `#` matches the parent level too: "a/#" matches "a".
            if let Some(leaf) = &node.hash {
                emit(leaf);
            }
            match rest {
                None => {
                    if let Some(leaf) = &node.here {
                        emit(leaf);
                    }
                }
                Some(rest) => {
                    let (level, next) = split_level(rest);
                    if let Some(plus) = &node.plus {
                        pending.push((plus, next));
                    }
                    if !node.literal.is_empty() {
                        if let Some(child) = node.literal.get(level) {
                            pending.push((child, next));
                        }
                    }
                }
            }
        }
    }
}

impl<K: Eq + Hash + Clone, V> SubscriptionTrie<K, V> {
    /// Adds `key` to `sub` with `value`, or replaces its value; returns the previous value.
    ///
    /// A replaced shared-group member keeps its place in the group's order.
    pub fn insert(&mut self, sub: &Subscription, key: K, value: V) -> Option<V> {
        let (filter, shared) = parts(sub);
        let (path, hash) = path_of(filter);
        let mut node = &mut self.root;
        for level in path.into_iter().flat_map(|p| p.split('/')) {
            node = node.child_or_insert(level);
        }
        let slot = if hash { &mut node.hash } else { &mut node.here };
        let leaf = slot.get_or_insert_with(|| Box::new(Leaf::new()));
        let previous = match shared {
            None => leaf.plain.insert(key, value),
            Some(shared) => {
                let i = match leaf.group_position(&shared.group) {
                    Some(i) => i,
                    None => {
                        leaf.shared.push(SharedGroup { id: shared.group_id(), members: Members::new() });
                        leaf.shared.len() - 1
                    }
                };
                leaf.shared[i].members.insert(key, value)
            }
        };
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// Removes `key` from `sub`; returns its value, or `None` if it was not subscribed.
    ///
    /// Nodes left without subscriptions below them are freed.
    pub fn remove(&mut self, sub: &Subscription, key: &K) -> Option<V> {
        let (filter, shared) = parts(sub);
        let (path, hash) = path_of(filter);
        let node = self.root.descend_mut(path)?;
        let slot = if hash { &mut node.hash } else { &mut node.here };
        let leaf = slot.as_deref_mut()?;
        let value = match shared {
            None => leaf.plain.remove(key, false)?,
            Some(shared) => {
                let i = leaf.group_position(&shared.group)?;
                let value = leaf.shared[i].members.remove(key, true)?;
                if leaf.shared[i].members.entries.is_empty() {
                    leaf.shared.remove(i);
                }
                value
            }
        };
        if leaf.is_empty() {
            *slot = None;
        }
        self.len -= 1;
        if let Some(path) = path {
            self.prune(path);
        }
        Some(value)
    }

    /// The value of `key`'s subscription `sub`, if any.
    pub fn get(&self, sub: &Subscription, key: &K) -> Option<&V> {
        let (filter, shared) = parts(sub);
        let (path, hash) = path_of(filter);
        let node = self.root.descend(path)?;
        let leaf = if hash { node.hash.as_deref() } else { node.here.as_deref() }?;
        match shared {
            None => leaf.plain.get(key),
            Some(shared) => leaf.shared[leaf.group_position(&shared.group)?].members.get(key),
        }
    }

    /// The value of `key`'s subscription `sub`, if any, to change in place.
    pub fn get_mut(&mut self, sub: &Subscription, key: &K) -> Option<&mut V> {
        let (filter, shared) = parts(sub);
        let (path, hash) = path_of(filter);
        let node = self.root.descend_mut(path)?;
        let leaf = if hash { node.hash.as_deref_mut() } else { node.here.as_deref_mut() }?;
        match shared {
            None => leaf.plain.get_mut(key),
            Some(shared) => {
                let i = leaf.group_position(&shared.group)?;
                leaf.shared[i].members.get_mut(key)
            }
        }
    }

    /// Frees the trailing run of nodes on `path` that no longer lead to any subscription.
    fn prune(&mut self, path: &str) {
        let depth = path.split('/').count();
        // First pass, read-only: find where the run of nodes that would be left empty starts.
        let mut cut = None;
        let mut node = &self.root;
        for (i, level) in path.split('/').enumerate() {
            let Some(child) = node.child(level) else { return };
            let path_children = usize::from(i + 1 < depth);
            if child.is_bare() && child.child_count() == path_children {
                cut.get_or_insert(i);
            } else {
                cut = None;
            }
            node = child;
        }
        let Some(cut) = cut else { return };
        // Second pass: detach the run from its parent.
        let mut levels = path.split('/');
        let mut node = &mut self.root;
        for level in levels.by_ref().take(cut) {
            match node.child_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        let Some(level) = levels.next() else { return };
        let detached = if level == "+" { node.plus.take().map(|b| *b) } else { node.literal.remove(level) };
        if let Some(detached) = detached {
            drop_deep(detached);
        }
    }
}

impl<K, V> Default for SubscriptionTrie<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> Drop for SubscriptionTrie<K, V> {
    /// Frees the nodes without recursion, which a deep filter would turn into a stack overflow.
    fn drop(&mut self) {
        drop_deep(mem::take(&mut self.root));
    }
}

impl<K, V> fmt::Debug for SubscriptionTrie<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTrie").field("len", &self.len).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::parse_subscription;
    use crate::test_support::{subscription, topic};

    impl<K: Eq + Hash + Clone, V> Members<K, V> {
        fn assert_consistent(&self) {
            if let Some(index) = &self.index {
                assert_eq!(index.len(), self.entries.len(), "index size");
                for (i, (k, _)) in self.entries.iter().enumerate() {
                    assert_eq!(index.get(k), Some(&i), "index position");
                }
            }
        }
    }

    impl<K: Eq + Hash + Clone, V> SubscriptionTrie<K, V> {
        /// Every non-root node leads to a subscription, nothing is empty, `len` counts the entries.
        fn assert_invariants(&self) {
            let mut count = 0;
            let mut stack = vec![(&self.root, true)];
            while let Some((node, is_root)) = stack.pop() {
                for leaf in [&node.here, &node.hash].into_iter().flatten() {
                    assert!(!leaf.is_empty(), "empty leaf kept");
                    leaf.plain.assert_consistent();
                    count += leaf.plain.entries.len();
                    for group in &leaf.shared {
                        assert!(!group.members.entries.is_empty(), "empty group kept");
                        group.members.assert_consistent();
                        count += group.members.entries.len();
                    }
                }
                if is_root {
                    assert!(node.here.is_none(), "the root holds no filter");
                } else {
                    assert!(!node.is_bare() || node.child_count() > 0, "empty node not pruned");
                }
                stack.extend(node.literal.values().map(|n| (n, false)));
                stack.extend(node.plus.as_deref().map(|n| (n, false)));
            }
            assert_eq!(count, self.len, "len");
        }
    }

    fn sub(s: &str) -> Subscription {
        parse_subscription(s).unwrap()
    }

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    type Matched<K, V> = (Vec<(K, V)>, Vec<(String, Vec<(K, V)>)>);

    fn matched<K: Clone + Ord, V: Clone + Ord>(trie: &SubscriptionTrie<K, V>, topic: &str) -> Matched<K, V> {
        let (mut plain, mut shared) = (Vec::new(), Vec::new());
        trie.match_topic(
            &name(topic),
            |k, v| plain.push((k.clone(), v.clone())),
            |id, members| shared.push((id.to_string(), members.to_vec())),
        );
        plain.sort();
        shared.sort();
        (plain, shared)
    }

    #[test]
    fn a_topic_reaches_literal_plus_and_hash_subscribers() {
        let mut trie = SubscriptionTrie::new();
        for (i, f) in ["a/b/c", "a/+/c", "a/#", "#", "+/+/+", "a/b", "a/b/c/d", "b/#"].into_iter().enumerate()
        {
            trie.insert(&sub(f), f, i);
        }
        let (plain, shared) = matched(&trie, "a/b/c");
        assert_eq!(plain, [("#", 3), ("+/+/+", 4), ("a/#", 2), ("a/+/c", 1), ("a/b/c", 0)]);
        assert!(shared.is_empty());
        trie.assert_invariants();
    }

    #[test]
    fn hash_matches_the_parent_level() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&sub("a/#"), 1, ());
        trie.insert(&sub("+/#"), 2, ());
        assert_eq!(matched(&trie, "a").0, [(1, ()), (2, ())]);
        assert_eq!(matched(&trie, "b").0, [(2, ())]);
    }

    #[test]
    fn plus_matches_an_empty_level() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&sub("a/+/b"), 1, ());
        trie.insert(&sub("+"), 2, ());
        assert_eq!(matched(&trie, "a//b").0, [(1, ())]);
        assert_eq!(matched(&trie, "/").0, []);
        assert_eq!(matched(&trie, "x").0, [(2, ())]);
    }

    #[test]
    fn first_level_wildcards_do_not_match_dollar_topics() {
        let mut trie = SubscriptionTrie::new();
        for f in ["#", "+/monitor/Clients", "$SYS/#", "$SYS/monitor/+", "$share/g/#"] {
            trie.insert(&sub(f), f, ());
        }
        let (plain, shared) = matched(&trie, "$SYS/monitor/Clients");
        assert_eq!(plain, [("$SYS/#", ()), ("$SYS/monitor/+", ())]);
        assert!(shared.is_empty());
        let (plain, shared) = matched(&trie, "x/monitor/Clients");
        assert_eq!(plain, [("#", ()), ("+/monitor/Clients", ())]);
        assert_eq!(shared, [("$share/g/#".to_owned(), vec![("$share/g/#", ())])]);
    }

    #[test]
    fn a_shared_group_is_visited_once_with_its_members_in_insertion_order() {
        let mut trie = SubscriptionTrie::new();
        for client in ["c3", "c1", "c2"] {
            trie.insert(&sub("$share/g/a/+"), client, 0);
        }
        trie.insert(&sub("$share/h/a/+"), "c1", 0);
        trie.insert(&sub("a/+"), "c1", 0);
        assert_eq!(trie.insert(&sub("$share/g/a/+"), "c1", 7), Some(0));
        let (plain, shared) = matched(&trie, "a/x");
        assert_eq!(plain, [("c1", 0)]);
        assert_eq!(
            shared,
            [
                ("$share/g/a/+".to_owned(), vec![("c3", 0), ("c1", 7), ("c2", 0)]),
                ("$share/h/a/+".to_owned(), vec![("c1", 0)]),
            ]
        );
        assert_eq!(trie.remove(&sub("$share/g/a/+"), &"c3"), Some(0));
        assert_eq!(matched(&trie, "a/x").1[0].1, [("c1", 7), ("c2", 0)]);
        assert_eq!(trie.len(), 5 - 1);
    }

    #[test]
    fn for_each_match_lets_one_callback_collect_plain_and_shared_deliveries() {
        let mut trie = SubscriptionTrie::new();
        trie.insert(&sub("a/+"), "plain", ());
        trie.insert(&sub("$share/g/a/#"), "member", ());
        let mut deliveries = Vec::new();
        trie.for_each_match(&name("a/b"), |found| match found {
            Match::Plain(client, ()) => deliveries.push(*client),
            Match::Shared(_, members) => deliveries.push(members[0].0),
        });
        deliveries.sort();
        assert_eq!(deliveries, ["member", "plain"]);
    }

    #[test]
    fn insert_replaces_and_remove_returns_the_value() {
        let mut trie = SubscriptionTrie::new();
        assert_eq!(trie.insert(&sub("a/b"), "c", 1), None);
        assert_eq!(trie.insert(&sub("a/b"), "c", 2), Some(1));
        assert_eq!(trie.get(&sub("a/b"), &"c"), Some(&2));
        *trie.get_mut(&sub("a/b"), &"c").unwrap() = 3;
        assert_eq!(trie.len(), 1);
        assert_eq!(trie.remove(&sub("a/b"), &"other"), None);
        assert_eq!(trie.remove(&sub("$share/g/a/b"), &"c"), None);
        assert_eq!(trie.remove(&sub("a/b"), &"c"), Some(3));
        assert_eq!(trie.remove(&sub("a/b"), &"c"), None);
        assert!(trie.is_empty());
    }

    #[test]
    fn removing_the_last_subscription_frees_every_node() {
        let mut trie = SubscriptionTrie::new();
        let filters = ["a/b/c/d", "a/b/#", "a/+/c", "+/+", "#", "/", "$share/g/a/b/c"];
        for f in filters {
            trie.insert(&sub(f), 1, ());
        }
        trie.assert_invariants();
        for f in filters {
            assert_eq!(trie.remove(&sub(f), &1), Some(()));
            trie.assert_invariants();
        }
        assert!(trie.root.literal.is_empty() && trie.root.plus.is_none() && trie.root.hash.is_none());
    }

    #[test]
    fn many_subscribers_on_one_filter_keep_their_index_consistent() {
        let mut trie = SubscriptionTrie::new();
        for shared in [false, true] {
            let s = if shared { sub("$share/g/x/y") } else { sub("x/y") };
            for i in 0..100 {
                trie.insert(&s, i, i);
            }
            trie.assert_invariants();
            for i in (0..100).step_by(3) {
                assert_eq!(trie.remove(&s, &i), Some(i));
                trie.assert_invariants();
            }
            assert_eq!(trie.insert(&s, 50, 500), Some(50));
            assert_eq!(trie.get(&s, &50), Some(&500));
            for i in 0..100 {
                trie.remove(&s, &i);
                trie.assert_invariants();
            }
        }
        assert!(trie.is_empty());
    }

    #[test]
    fn very_deep_filters_do_not_overflow_a_small_stack() {
        let deep = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let levels = 30_000;
                let topic = vec!["a"; levels].join("/");
                let mut trie = SubscriptionTrie::new();
                trie.insert(&sub(&topic), 1, ());
                trie.insert(&sub(&format!("{}/#", vec!["+"; levels - 1].join("/"))), 2, ());
                let (plain, _) = matched(&trie, &topic);
                assert_eq!(plain, [(1, ()), (2, ())]);
                assert_eq!(trie.remove(&sub(&topic), &1), Some(()));
                trie.insert(&sub(&format!("{topic}/b")), 3, ());
                // Dropped with deep nodes still in it.
            })
            .unwrap();
        deep.join().unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Subscription, u8, u32),
        Remove(Subscription, u8),
        RemoveExisting(Index),
        Match(TopicName),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (subscription(), 0..4u8, any::<u32>()).prop_map(|(s, k, v)| Op::Insert(s, k, v)),
            1 => (subscription(), 0..4u8).prop_map(|(s, k)| Op::Remove(s, k)),
            2 => any::<Index>().prop_map(Op::RemoveExisting),
            4 => topic().prop_map(Op::Match),
        ]
    }

    /// The brute-force model: every entry in insertion order, matched with `TopicFilter::matches`.
    #[derive(Default)]
    struct Model(Vec<(Subscription, u8, u32)>);

    impl Model {
        fn insert(&mut self, sub: &Subscription, key: u8, value: u32) -> Option<u32> {
            match self.0.iter_mut().find(|(s, k, _)| s == sub && *k == key) {
                Some(entry) => Some(mem::replace(&mut entry.2, value)),
                None => {
                    self.0.push((sub.clone(), key, value));
                    None
                }
            }
        }

        fn remove(&mut self, sub: &Subscription, key: u8) -> Option<u32> {
            let i = self.0.iter().position(|(s, k, _)| s == sub && *k == key)?;
            Some(self.0.remove(i).2)
        }

        fn matched(&self, topic: &TopicName) -> Matched<u8, u32> {
            let mut plain = Vec::new();
            let mut shared: BTreeMap<String, Vec<(u8, u32)>> = BTreeMap::new();
            for (sub, key, value) in &self.0 {
                if !sub.filter().matches(topic) {
                    continue;
                }
                match sub {
                    Subscription::Plain(_) => plain.push((*key, *value)),
                    Subscription::Shared(s) => shared.entry(s.to_string()).or_default().push((*key, *value)),
                }
            }
            plain.sort();
            (plain, shared.into_iter().collect())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_trie_matches_like_brute_force_over_all_filters(ops in prop::collection::vec(op(), 1..60)) {
            let mut trie = SubscriptionTrie::new();
            let mut model = Model::default();
            for op in ops {
                match op {
                    Op::Insert(sub, key, value) => {
                        prop_assert_eq!(trie.insert(&sub, key, value), model.insert(&sub, key, value));
                    }
                    Op::Remove(sub, key) => {
                        prop_assert_eq!(trie.remove(&sub, &key), model.remove(&sub, key));
                    }
                    Op::RemoveExisting(index) => {
                        if !model.0.is_empty() {
                            let (sub, key, value) = model.0[index.index(model.0.len())].clone();
                            prop_assert_eq!(trie.get(&sub, &key), Some(&value));
                            prop_assert_eq!(trie.remove(&sub, &key), model.remove(&sub, key));
                        }
                    }
                    Op::Match(topic) => {
                        let (plain, shared) = matched(&trie, &topic);
                        let ids: Vec<&String> = shared.iter().map(|(id, _)| id).collect();
                        let mut unique = ids.clone();
                        unique.dedup();
                        prop_assert_eq!(&ids, &unique, "a shared group was visited twice");
                        prop_assert_eq!((plain, shared), model.matched(&topic));
                    }
                }
                prop_assert_eq!(trie.len(), model.0.len());
                trie.assert_invariants();
            }
            for (sub, key, value) in std::mem::take(&mut model.0) {
                prop_assert_eq!(trie.remove(&sub, &key), Some(value));
            }
            prop_assert!(trie.is_empty());
            prop_assert!(trie.root.literal.is_empty() && trie.root.plus.is_none() && trie.root.hash.is_none());
        }

        #[test]
        fn members_keep_order_and_index_under_random_edits(
            ops in prop::collection::vec((any::<bool>(), 0..80u8, any::<bool>()), 0..400),
        ) {
            let mut members = Members::new();
            let mut model: Vec<(u8, u32)> = Vec::new();
            for (n, (insert, key, keep_order)) in ops.into_iter().enumerate() {
                let n = n as u32;
                if insert {
                    let previous = match model.iter_mut().find(|(k, _)| *k == key) {
                        Some(entry) => Some(mem::replace(&mut entry.1, n)),
                        None => { model.push((key, n)); None }
                    };
                    prop_assert_eq!(members.insert(key, n), previous);
                } else {
                    let removed = model.iter().position(|(k, _)| *k == key).map(|i| {
                        if keep_order { model.remove(i).1 } else { model.swap_remove(i).1 }
                    });
                    prop_assert_eq!(members.remove(&key, keep_order), removed);
                }
                prop_assert_eq!(&members.entries, &model);
                members.assert_consistent();
            }
        }
    }
}
