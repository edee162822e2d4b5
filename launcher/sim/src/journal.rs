//! The event journal: one line per event and per effect, hashed as it is written.
//!
//! The hash (FNV-1a, 64 bits) covers every byte of every line, so two runs
//! compare by one number; `--journal FILE` keeps the lines themselves for a
//! `diff` when they do not match. Lines hold simulated times and ids only,
//! never wall-clock measurements.

use std::fmt::Write as _;
use std::io::Write;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a over `bytes`, continuing from `hash`.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// A hashed, optionally written, line journal.
pub struct Journal {
    hash: u64,
    lines: u64,
    buf: String,
    out: Option<Box<dyn Write>>,
}

impl Journal {
    /// A journal that only hashes, or also writes to `out`.
    pub fn new(out: Option<Box<dyn Write>>) -> Journal {
        Journal { hash: FNV_OFFSET, lines: 0, buf: String::new(), out }
    }

    /// Append one line (without its newline) at simulated time `t_us`.
    pub fn line(&mut self, t_us: u64, args: std::fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = writeln!(self.buf, "{t_us} {args}");
        self.hash = fnv1a(self.hash, self.buf.as_bytes());
        self.lines += 1;
        if let Some(out) = &mut self.out {
            if let Err(e) = out.write_all(self.buf.as_bytes()) {
                panic!("cannot write the journal: {e}");
            }
        }
    }

    /// Flush the file, if any.
    pub fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }

    /// Hash of every line so far.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Lines so far.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn hash_covers_lines() {
        let mut a = Journal::new(None);
        let mut b = Journal::new(None);
        a.line(1, format_args!("launch job=1"));
        b.line(1, format_args!("launch job=1"));
        assert_eq!(a.hash(), b.hash());
        b.line(2, format_args!("end job=1"));
        assert_ne!(a.hash(), b.hash());
        assert_eq!(b.lines(), 2);
    }
}
