//! [`TopicTree`]: topic names → values (retained messages), matched against one filter.

use std::collections::HashMap;
use std::fmt;
use std::mem;

use crate::limits::split_level;
use crate::{TopicFilter, TopicName};

/// A tree of topic names → values, one per name: the retained-message store's shape.
///
/// [`TopicTree::match_filter`] walks only the branches a filter can match: a literal level follows one
/// child, `+` every child, `#` the whole subtree. Nothing here recurses on the depth of a topic.
pub struct TopicTree<V> {
    /// Never holds a value itself: every topic has at least one level.
    root: TreeNode<V>,
    /// Number of stored topics.
    len: usize,
}

struct TreeNode<V> {
    children: HashMap<Box<str>, TreeNode<V>>,
    /// The value stored under this node's path, with the name, so visits need not rebuild it.
    entry: Option<(TopicName, V)>,
}

impl<V> Default for TreeNode<V> {
    fn default() -> Self {
        Self { children: HashMap::new(), entry: None }
    }
}

impl<V> TreeNode<V> {
    fn find(&self, path: &str) -> Option<&Self> {
        let mut node = self;
        for level in path.split('/') {
            node = node.children.get(level)?;
        }
        Some(node)
    }

    fn find_mut(&mut self, path: &str) -> Option<&mut Self> {
        let mut node = self;
        for level in path.split('/') {
            node = node.children.get_mut(level)?;
        }
        Some(node)
    }
}

/// Drops a subtree without recursion, however deep it is.
fn drop_deep<V>(node: TreeNode<V>) {
    let mut stack = vec![node];
    while let Some(mut node) = stack.pop() {
        stack.extend(node.children.drain().map(|(_, child)| child));
    }
}

impl<V> TopicTree<V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self { root: TreeNode::default(), len: 0 }
    }

    /// Number of stored topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value` under `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &TopicName, value: V) -> Option<V> {
        let mut node = &mut self.root;
        for level in topic.levels() {
            // `entry` would allocate the key even when the child exists; look up first.
            if !node.children.contains_key(level) {
                node.children.insert(level.into(), TreeNode::default());
            }
            node = node.children.get_mut(level).expect("child was just inserted");
        }
        match &mut node.entry {
            Some((_, old)) => Some(mem::replace(old, value)),
            None => {
                node.entry = Some((topic.clone(), value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value stored under `topic`; nodes left empty are freed.
    pub fn remove(&mut self, topic: &TopicName) -> Option<V> {
        let (_, value) = self.root.find_mut(topic.as_str())?.entry.take()?;
        self.len -= 1;
        self.prune(topic.as_str());
        Some(value)
    }

    /// The value stored under `topic`.
    pub fn get(&self, topic: &TopicName) -> Option<&V> {
        self.root.find(topic.as_str())?.entry.as_ref().map(|(_, value)| value)
    }

    /// The value stored under `topic`, to change in place.
    pub fn get_mut(&mut self, topic: &TopicName) -> Option<&mut V> {
        self.root.find_mut(topic.as_str())?.entry.as_mut().map(|(_, value)| value)
    }

    /// Visits every stored topic that `filter` matches, with the same rules as
    /// [`TopicFilter::matches`] (`$` topics included), in unspecified order.
    ///
    /// Only branches the filter can match are walked. A filter without wildcards is one lookup and
    /// does not allocate; a wildcard walk keeps its pending branches in a `Vec`.
    pub fn match_filter(&self, filter: &TopicFilter, mut visit: impl FnMut(&TopicName, &V)) {
        let mut emit = |node: &TreeNode<V>| {
            if let Some((name, value)) = &node.entry {
                visit(name, value);
            }
        };
        if !filter.has_wildcards() {
            if let Some(node) = self.root.find(filter.as_str()) {
                emit(node);
            }
            return;
        }
        // Items are (node, rest of the filter to apply below it, whether the node is the root).
        let mut pending: Vec<(&TreeNode<V>, Option<&str>, bool)> =
            vec![(&self.root, Some(filter.as_str()), true)];
        let mut subtree: Vec<&TreeNode<V>> = Vec::new();
        // §4.7.2: a first-level wildcard does not match a topic starting with `$`.
        let visible = |at_root: bool, level: &str| !(at_root && level.starts_with('$'));
        while let Some((node, rest, at_root)) = pending.pop() {
            let Some(rest) = rest else {
                emit(node);
                continue;
            };
            let (level, next) = split_level(rest);
            match level {
                "#" => {
                    // `#` matches the parent level too: "a/#" matches "a".
                    emit(node);
                    subtree.extend(node.children.iter().filter(|(k, _)| visible(at_root, k)).map(|(_, c)| c));
                    while let Some(node) = subtree.pop() {
                        emit(node);
                        subtree.extend(node.children.values());
                    }
                }
                "+" => pending.extend(
                    node.children.iter().filter(|(k, _)| visible(at_root, k)).map(|(_, c)| (c, next, false)),
                ),
                _ => pending.extend(node.children.get(level).map(|c| (c, next, false))),
            }
        }
    }

    /// Visits every stored topic, `$` topics included, in unspecified order.
    pub fn for_each(&self, mut visit: impl FnMut(&TopicName, &V)) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some((name, value)) = &node.entry {
                visit(name, value);
            }
            stack.extend(node.children.values());
        }
    }

    /// Keeps only the topics for which `keep` returns `true` (an expiry sweep); `keep` may also change
    /// the values it keeps. Nodes left empty are freed.
    pub fn retain(&mut self, mut keep: impl FnMut(&TopicName, &mut V) -> bool) {
        let mut removed = Vec::new();
        let mut stack = vec![&mut self.root];
        while let Some(node) = stack.pop() {
            let drop_entry = match &mut node.entry {
                Some((name, value)) => !keep(name, value),
                None => false,
            };
            if drop_entry {
                removed.extend(node.entry.take().map(|(name, _)| name));
            }
            stack.extend(node.children.values_mut());
        }
        self.len -= removed.len();
        // Pruning needs to know a whole subtree is empty, which a single top-down pass cannot; the
        // removed paths say where to look.
        for name in &removed {
            self.prune(name.as_str());
        }
    }

    /// Frees the trailing run of nodes on `path` that hold no value and lead to none.
    fn prune(&mut self, path: &str) {
        let depth = path.split('/').count();
        let mut cut = None;
        let mut node = &self.root;
        for (i, level) in path.split('/').enumerate() {
            let Some(child) = node.children.get(level) else { return };
            let path_children = usize::from(i + 1 < depth);
            if child.entry.is_none() && child.children.len() == path_children {
                cut.get_or_insert(i);
            } else {
                cut = None;
            }
            node = child;
        }
        let Some(cut) = cut else { return };
        let mut levels = path.split('/');
        let mut node = &mut self.root;
        for level in levels.by_ref().take(cut) {
            match node.children.get_mut(level) {
                Some(child) => node = child,
                None => return,
            }
        }
        if let Some(detached) = levels.next().and_then(|level| node.children.remove(level)) {
            drop_deep(detached);
        }
    }
}

impl<V> Default for TopicTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Drop for TopicTree<V> {
    /// Frees the nodes without recursion, which a deep topic would turn into a stack overflow.
    fn drop(&mut self) {
        drop_deep(mem::take(&mut self.root));
    }
}

impl<V> fmt::Debug for TopicTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicTree").field("len", &self.len).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;
    use crate::test_support::{filter, topic};

    impl<V> TopicTree<V> {
        /// Every non-root node holds or leads to a value, each stored under its own name; `len` counts them.
        fn assert_invariants(&self) {
            let mut count = 0;
            let mut stack = vec![(&self.root, String::new())];
            while let Some((node, path)) = stack.pop() {
                match &node.entry {
                    Some((name, _)) => {
                        assert_eq!(name.as_str(), path, "entry stored under another path");
                        count += 1;
                    }
                    None => assert!(path.is_empty() || !node.children.is_empty(), "empty node not pruned"),
                }
                for (level, child) in &node.children {
                    let path = if std::ptr::eq(node, &self.root) {
                        level.to_string()
                    } else {
                        format!("{path}/{level}")
                    };
                    stack.push((child, path));
                }
            }
            assert_eq!(count, self.len, "len");
        }
    }

    fn name(s: &str) -> TopicName {
        TopicName::try_from(s).unwrap()
    }

    fn matched<V: Clone + Ord>(tree: &TopicTree<V>, filter: &str) -> Vec<(String, V)> {
        let mut out = Vec::new();
        tree.match_filter(&TopicFilter::try_from(filter).unwrap(), |n, v| {
            out.push((n.to_string(), v.clone()))
        });
        out.sort();
        out
    }

    fn tree_of(topics: &[&str]) -> TopicTree<u32> {
        let mut tree = TopicTree::new();
        for (i, t) in topics.iter().enumerate() {
            tree.insert(&name(t), i as u32);
        }
        tree
    }

    fn names(found: Vec<(String, u32)>) -> Vec<String> {
        found.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn a_filter_finds_literal_plus_and_hash_matches() {
        let tree = tree_of(&["a", "a/b", "a/b/c", "a/c", "b/b", "a//c", "/a"]);
        assert_eq!(names(matched(&tree, "a/b")), ["a/b"]);
        assert_eq!(names(matched(&tree, "a/+")), ["a/b", "a/c"]);
        assert_eq!(names(matched(&tree, "a/+/c")), ["a//c", "a/b/c"]);
        assert_eq!(names(matched(&tree, "a/#")), ["a", "a//c", "a/b", "a/b/c", "a/c"]);
        assert_eq!(names(matched(&tree, "+")), ["a"]);
        assert_eq!(names(matched(&tree, "+/+")), ["/a", "a/b", "a/c", "b/b"]);
        assert_eq!(matched(&tree, "#").len(), 7);
        assert_eq!(names(matched(&tree, "x/#")), Vec::<String>::new());
    }

    #[test]
    fn first_level_wildcards_do_not_find_dollar_topics() {
        let tree = tree_of(&["$SYS/uptime", "$SYS", "x/$SYS", "x"]);
        assert_eq!(names(matched(&tree, "#")), ["x", "x/$SYS"]);
        assert_eq!(names(matched(&tree, "+")), ["x"]);
        assert_eq!(names(matched(&tree, "+/uptime")), Vec::<String>::new());
        assert_eq!(names(matched(&tree, "$SYS/#")), ["$SYS", "$SYS/uptime"]);
        assert_eq!(names(matched(&tree, "x/+")), ["x/$SYS"]);
    }

    #[test]
    fn insert_replaces_and_remove_frees_the_branch() {
        let mut tree = TopicTree::new();
        assert_eq!(tree.insert(&name("a/b/c"), 1), None);
        assert_eq!(tree.insert(&name("a/b/c"), 2), Some(1));
        assert_eq!(tree.insert(&name("a"), 3), None);
        assert_eq!(tree.get(&name("a/b/c")), Some(&2));
        assert_eq!(tree.get(&name("a/b")), None);
        assert_eq!(tree.len(), 2);
        assert_eq!(tree.remove(&name("a/b")), None);
        assert_eq!(tree.remove(&name("a/b/c")), Some(2));
        tree.assert_invariants();
        assert!(tree.root.children["a"].children.is_empty());
        assert_eq!(tree.remove(&name("a")), Some(3));
        assert!(tree.root.children.is_empty() && tree.is_empty());
    }

    #[test]
    fn retain_drops_rejected_topics_and_prunes_their_branches() {
        let mut tree = tree_of(&["a/b/c", "a/b", "x/y/z", "x"]);
        tree.retain(|n, v| {
            *v += 10;
            n.as_str().len() < 4
        });
        tree.assert_invariants();
        assert_eq!(matched(&tree, "#"), [("a/b".to_owned(), 11), ("x".to_owned(), 13)]);
        assert!(tree.root.children["x"].children.is_empty());
    }

    #[test]
    fn very_deep_topics_do_not_overflow_a_small_stack() {
        let deep = std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(|| {
                let topic = vec!["a"; 30_000].join("/");
                let mut tree = TopicTree::new();
                tree.insert(&name(&topic), 1);
                tree.insert(&name(&format!("{topic}/b")), 2);
                assert_eq!(matched(&tree, "#").len(), 2);
                assert_eq!(matched(&tree, &format!("{}/+", vec!["+"; 30_000].join("/"))).len(), 1);
                assert_eq!(tree.remove(&name(&format!("{topic}/b"))), Some(2));
                tree.retain(|_, _| false);
                assert!(tree.root.children.is_empty());
                tree.insert(&name(&topic), 1);
                // Dropped with the deep branch in it.
            })
            .unwrap();
        deep.join().unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(TopicName, u32),
        Remove(TopicName),
        RemoveExisting(Index),
        Retain(u32),
        Match(TopicFilter),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (topic(), any::<u32>()).prop_map(|(t, v)| Op::Insert(t, v)),
            1 => topic().prop_map(Op::Remove),
            1 => any::<Index>().prop_map(Op::RemoveExisting),
            1 => (0..3u32).prop_map(Op::Retain),
            4 => filter().prop_map(Op::Match),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn match_filter_finds_what_brute_force_finds(ops in prop::collection::vec(op(), 1..60)) {
            let mut tree = TopicTree::new();
            let mut model: BTreeMap<TopicName, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(topic, value) => {
                        prop_assert_eq!(tree.insert(&topic, value), model.insert(topic, value));
                    }
                    Op::Remove(topic) => prop_assert_eq!(tree.remove(&topic), model.remove(&topic)),
                    Op::RemoveExisting(index) => {
                        if let Some(topic) = model.keys().nth(index.index(model.len().max(1))).cloned() {
                            prop_assert_eq!(tree.get(&topic), model.get(&topic));
                            prop_assert_eq!(tree.remove(&topic), model.remove(&topic));
                        }
                    }
                    Op::Retain(residue) => {
                        tree.retain(|_, v| *v % 3 != residue);
                        model.retain(|_, v| *v % 3 != residue);
                    }
                    Op::Match(filter) => {
                        let mut found = Vec::new();
                        tree.match_filter(&filter, |n, v| found.push((n.clone(), *v)));
                        found.sort();
                        let expected: Vec<(TopicName, u32)> =
                            model.iter().filter(|(n, _)| filter.matches(n)).map(|(n, v)| (n.clone(), *v)).collect();
                        prop_assert_eq!(found, expected);
                    }
                }
                prop_assert_eq!(tree.len(), model.len());
                tree.assert_invariants();
            }
            let mut all = Vec::new();
            tree.for_each(|n, v| all.push((n.clone(), *v)));
            all.sort();
            prop_assert_eq!(all, model.into_iter().collect::<Vec<_>>());
            tree.retain(|_, _| false);
            prop_assert!(tree.is_empty() && tree.root.children.is_empty());
        }
    }
}
