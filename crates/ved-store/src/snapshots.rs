//! The latest snapshot of every instance, as recovery hands them over.

use crate::codec::SnapshotRecord;

/// Snapshots sorted by instance name, one per instance: a map from name to snapshot
/// whose key is the snapshot's own name. A sorted vector, not a `BTreeMap<String, _>`:
/// recovery builds it with one move per snapshot and no second copy of each name, which
/// at a million instances is most of a restart's time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshots {
    sorted: Vec<SnapshotRecord>,
}

impl Snapshots {
    /// From snapshots already sorted by name, each name once.
    pub(crate) fn from_sorted(sorted: Vec<SnapshotRecord>) -> Snapshots {
        debug_assert!(
            sorted.windows(2).all(|w| w[0].snapshot.name < w[1].snapshot.name),
            "snapshots are sorted by name, each name once"
        );
        Snapshots { sorted }
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.sorted.binary_search_by(|s| s.snapshot.name.as_str().cmp(name))
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&SnapshotRecord> {
        self.find(name).ok().map(|i| &self.sorted[i])
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Adds or replaces the snapshot of `s`'s instance; returns the one replaced.
    pub fn insert(&mut self, s: SnapshotRecord) -> Option<SnapshotRecord> {
        match self.find(&s.snapshot.name) {
            Ok(i) => Some(std::mem::replace(&mut self.sorted[i], s)),
            Err(i) => {
                self.sorted.insert(i, s);
                None
            }
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<SnapshotRecord> {
        self.find(name).ok().map(|i| self.sorted.remove(i))
    }

    /// Instance names, ascending.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.sorted.iter().map(|s| &s.snapshot.name)
    }

    pub fn values(&self) -> std::slice::Iter<'_, SnapshotRecord> {
        self.sorted.iter()
    }

    /// (name, snapshot), ascending by name.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SnapshotRecord)> {
        self.sorted.iter().map(|s| (&s.snapshot.name, s))
    }

    /// The snapshots, ascending by name, moved out.
    pub fn into_values(self) -> std::vec::IntoIter<SnapshotRecord> {
        self.sorted.into_iter()
    }
}

impl std::ops::Index<&str> for Snapshots {
    type Output = SnapshotRecord;

    fn index(&self, name: &str) -> &SnapshotRecord {
        self.get(name).unwrap_or_else(|| panic!("no snapshot of instance `{name}`"))
    }
}

impl<'a> IntoIterator for &'a Snapshots {
    type Item = (&'a String, &'a SnapshotRecord);
    type IntoIter =
        std::iter::Map<std::slice::Iter<'a, SnapshotRecord>, fn(&SnapshotRecord) -> (&String, &SnapshotRecord)>;

    fn into_iter(self) -> Self::IntoIter {
        self.sorted.iter().map(|s| (&s.snapshot.name, s))
    }
}

impl FromIterator<SnapshotRecord> for Snapshots {
    /// Later snapshots of the same instance replace earlier ones.
    fn from_iter<I: IntoIterator<Item = SnapshotRecord>>(iter: I) -> Snapshots {
        let mut out = Snapshots::default();
        for s in iter {
            out.insert(s);
        }
        out
    }
}
