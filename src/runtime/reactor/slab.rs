//! The registrations of a reactor: a slab of slots, each with a generation, and a small index
//! from the agents' tokens to slots.
//!
//! The kernel side never hashes: io_uring `user_data` and epoll event data carry the slot and
//! its generation ([`Key`]), so a completion finds its registration by indexing, and a stale one
//! (for a slot freed and reused since) is recognised by its generation. Only the calls an agent
//! makes by token (`send`, `close`, ...) go through the index, a hash map with a multiplicative
//! hash of the token ([`TokenHasher`]) instead of SipHash.
//!
//! Freed slots are reused first-in first-out, so a slot rests as long as possible before it
//! holds another registration.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;

use super::Token;

/// Most slots a reactor holds: the slot index has 24 bits in io_uring's `user_data`.
pub(super) const MAX_SLOTS: u32 = 1 << 24;
/// Generations wrap at 24 bits (the rest of `user_data`).
const GENERATION_MASK: u32 = (1 << 24) - 1;

/// A registration's slot and the generation it had when the registration was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

impl Key {
    /// The key as 64 bits (epoll event data).
    pub(super) fn to_u64(self) -> u64 {
        u64::from(self.slot) | (u64::from(self.generation) << 32)
    }

    /// The inverse of [`to_u64`](Self::to_u64).
    pub(super) fn from_u64(data: u64) -> Self {
        Key { slot: data as u32, generation: (data >> 32) as u32 }
    }
}

/// Slots of `T`, addressed by [`Key`], and an index from tokens to the live ones.
pub(super) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: VecDeque<u32>,
    index: HashMap<Token, u32, BuildHasherDefault<TokenHasher>>,
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slab<T> {
    pub(super) fn new() -> Self {
        Self { slots: Vec::new(), free: VecDeque::new(), index: HashMap::default() }
    }

    /// Stores `value` under `token`; refuses a token that is already registered.
    pub(super) fn insert(&mut self, token: Token, value: T) -> io::Result<Key> {
        if self.index.contains_key(&token) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "token already registered"));
        }
        let slot = match self.free.pop_front() {
            Some(slot) => slot,
            None if self.slots.len() < MAX_SLOTS as usize => {
                self.slots.push(Slot { generation: 0, value: None });
                (self.slots.len() - 1) as u32
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("more than {MAX_SLOTS} sockets registered with one reactor"),
                ))
            }
        };
        let entry = &mut self.slots[slot as usize];
        debug_assert!(entry.value.is_none(), "a free slot holds nothing");
        entry.value = Some(value);
        self.index.insert(token, slot);
        Ok(Key { slot, generation: entry.generation })
    }

    /// The key `token` is registered under.
    #[inline]
    pub(super) fn key(&self, token: Token) -> Option<Key> {
        let &slot = self.index.get(&token)?;
        Some(Key { slot, generation: self.slots[slot as usize].generation })
    }

    /// The value under `key`, if that registration still holds the slot.
    #[inline]
    pub(super) fn get(&self, key: Key) -> Option<&T> {
        let slot = self.slots.get(key.slot as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.value.as_ref()
    }

    /// Mutable [`get`](Self::get).
    #[inline]
    pub(super) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// The value registered under `token`, with its key.
    #[inline]
    pub(super) fn by_token(&self, token: Token) -> Option<(Key, &T)> {
        let key = self.key(token)?;
        Some((key, self.get(key)?))
    }

    /// Mutable [`by_token`](Self::by_token).
    #[inline]
    pub(super) fn by_token_mut(&mut self, token: Token) -> Option<(Key, &mut T)> {
        let key = self.key(token)?;
        Some((key, self.get_mut(key)?))
    }

    /// Forgets `token`, keeping its slot (and value) until [`remove`](Self::remove): the token
    /// may be registered again at once, while the old registration winds down.
    pub(super) fn unindex(&mut self, token: Token) -> Option<Key> {
        let slot = self.index.remove(&token)?;
        Some(Key { slot, generation: self.slots[slot as usize].generation })
    }

    /// Frees the slot of `key` and gives its value back; every key to it goes stale.
    pub(super) fn remove(&mut self, key: Key, token: Token) -> Option<T> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if slot.generation != key.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1) & GENERATION_MASK;
        if self.index.get(&token) == Some(&key.slot) {
            self.index.remove(&token);
        }
        self.free.push_back(key.slot);
        Some(value)
    }

    /// Registrations reachable by token.
    pub(super) fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Every occupied slot (indexed or winding down), with its key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Key, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|v| (Key { slot: i as u32, generation: s.generation }, v))
        })
    }
}

/// A hasher for tokens: one multiply and a fold, which spreads sequential agent-local ids over
/// the table (a multiplication by an odd constant is a bijection on the low bits) and mixes the
/// agent byte in the top bits down. Not DoS-resistant, and it need not be: agents choose their
/// tokens, peers do not.
#[derive(Default)]
pub(crate) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b) ^ self.0.rotate_left(8));
        }
    }

    #[inline]
    fn write_u64(&mut self, value: u64) {
        let h = (value ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 32);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` keyed by tokens with [`TokenHasher`].
pub(crate) type TokenMap<V> = HashMap<Token, V, BuildHasherDefault<TokenHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_slots_are_reused_first_in_first_out_and_old_keys_go_stale() {
        let mut slab = Slab::new();
        let a = slab.insert(Token(1), "a").unwrap();
        let b = slab.insert(Token(2), "b").unwrap();
        let c = slab.insert(Token(3), "c").unwrap();
        assert!(slab.insert(Token(1), "again").is_err(), "a token is registered once");
        assert_eq!(slab.remove(b, Token(2)), Some("b"));
        assert_eq!(slab.remove(a, Token(1)), Some("a"));
        assert_eq!(slab.get(a), None, "a freed slot's old key is stale");
        // FIFO: the slot freed first is reused first, with a new generation.
        let d = slab.insert(Token(4), "d").unwrap();
        assert_eq!(d.slot, b.slot);
        assert_ne!(d.generation, b.generation);
        assert_eq!(slab.get(b), None);
        assert_eq!(slab.get(d), Some(&"d"));
        let e = slab.insert(Token(1), "e").unwrap();
        assert_eq!(e.slot, a.slot);
        assert_eq!(slab.by_token(Token(3)), Some((c, &"c")));
        assert_eq!(slab.indexed(), 3);
    }

    #[test]
    fn an_unindexed_registration_winds_down_while_its_token_is_reused() {
        let mut slab = Slab::new();
        let old = slab.insert(Token(7), 1).unwrap();
        assert_eq!(slab.unindex(Token(7)), Some(old));
        assert_eq!(slab.get(old), Some(&1), "still there until removed");
        let new = slab.insert(Token(7), 2).unwrap();
        assert_ne!(new.slot, old.slot);
        assert_eq!(slab.remove(old, Token(7)), Some(1));
        assert_eq!(slab.key(Token(7)), Some(new), "removing the old one keeps the new index");
        assert_eq!(Key::from_u64(new.to_u64()), new);
    }
}
