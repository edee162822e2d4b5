//! Newtype identifiers, stamped out by one macro so they cannot be mixed up.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw number.
            pub fn as_num(self) -> $inner {
                self.0
            }
        }

    };
}

define_id!(
    /// A job, numbered from 1 in submission order by the controller.
    ///
    /// An array job's child `P:i` is the id `P` with `i + 1` in the bits above
    /// [`JobId::CHILD_SHIFT`], so every layer that keys on a job (agents, output,
    /// logs) handles children without knowing about arrays.
    JobId(u64)
);
define_id!(
    /// A node (one `nodeagent`), numbered from 1 when it first registers.
    NodeId(u32)
);

impl JobId {
    /// Bits for the parent's number; parents stay below 2^40.
    pub const CHILD_SHIFT: u32 = 40;
    /// Largest array index plus one.
    pub const MAX_INDEX: u32 = (1 << 23) - 1;

    /// Child `index` of array job `self`.
    pub fn child(self, index: u32) -> JobId {
        debug_assert!(index < Self::MAX_INDEX && self.0 < 1 << Self::CHILD_SHIFT);
        JobId(self.0 | (u64::from(index) + 1) << Self::CHILD_SHIFT)
    }

    /// The array job this is a child of, or itself.
    pub fn parent(self) -> JobId {
        JobId(self.0 & ((1 << Self::CHILD_SHIFT) - 1))
    }

    /// The array index of a child.
    pub fn index(self) -> Option<u32> {
        match self.0 >> Self::CHILD_SHIFT {
            0 => None,
            i => Some(i as u32 - 1),
        }
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index() {
            Some(i) => write!(f, "{}:{}", self.parent().0, i),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::str::FromStr for JobId {
    type Err = String;
    /// `12` or, for an array child, `12:3` (or Slurm's `12_3`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a job id (expected a number like 12, or 12:3 for an array child)");
        let (p, i) = match s.split_once([':', '_']) {
            Some((p, i)) => (p, Some(i)),
            None => (s, None),
        };
        let p: u64 = p.parse().map_err(|_| bad())?;
        if p == 0 || p >= 1 << Self::CHILD_SHIFT {
            return Err(bad());
        }
        match i {
            None => Ok(JobId(p)),
            Some(i) => {
                let i: u32 = i.parse().map_err(|_| bad())?;
                if i >= Self::MAX_INDEX {
                    return Err(format!("array index {i} in {s:?} is too large"));
                }
                Ok(JobId(p).child(i))
            }
        }
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u32::deserialize(d).map(NodeId)
    }
}

/// On the wire a job id is its number; in JSON, an array child is the string
/// `"P:i"` (a plain job stays a number), so scripts see what the CLI prints.
impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() && self.index().is_some() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return u64::deserialize(d).map(JobId);
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Num(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(JobId(n)),
            Either::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::JobId;

    #[test]
    fn child_ids_round_trip() {
        let c = JobId(12).child(3);
        assert_eq!(c.to_string(), "12:3");
        assert_eq!(c.parent(), JobId(12));
        assert_eq!(c.index(), Some(3));
        assert_eq!("12:3".parse::<JobId>().unwrap(), c);
        assert_eq!("12".parse::<JobId>().unwrap(), JobId(12));
        assert_eq!("12_3".parse::<JobId>().unwrap(), c);
        assert_eq!(JobId(12).index(), None);
        assert_eq!(JobId(12).child(0).index(), Some(0));
        assert!("x".parse::<JobId>().is_err());
        assert!("0".parse::<JobId>().is_err());
        assert!("12:".parse::<JobId>().unwrap_err().contains("not a job id"));
    }

    #[test]
    fn json_shows_children_as_the_cli_prints_them() {
        assert_eq!(serde_json::to_string(&JobId(7)).unwrap(), "7");
        assert_eq!(serde_json::to_string(&JobId(7).child(2)).unwrap(), "\"7:2\"");
        assert_eq!(serde_json::from_str::<JobId>("\"7:2\"").unwrap(), JobId(7).child(2));
        assert_eq!(serde_json::from_str::<JobId>("7").unwrap(), JobId(7));
        let wire = crate::encode(&JobId(7).child(2));
        assert_eq!(crate::decode::<JobId>(&wire).unwrap(), JobId(7).child(2));
    }
}
