//! Two of Flash's three caches (the third, response heads, lives with each
//! [`OpenFile`]):
//!
//! - [`PathCache`]: request path -> resolved file (open descriptor, metadata,
//!   cached head), so a hit costs no helper round trip and no system call.
//!   Entries are trusted for half the freshness interval, revalidated by a
//!   helper in the background during the second half, and not trusted after
//!   it: a file replaced, changed or deleted is noticed within the interval,
//!   and the main loop never waits on the disk to find out.
//! - [`MapCache`]: files mapped in chunks, unmapped when the mapped total
//!   passes the budget (the paper's mapped-file cache). A budget of 0 maps
//!   on every use (the cache switched off).
//!
//! Both evict by a clock (second chance) over their slots, so a hit only sets
//! a bit: no allocation and no list maintenance per request.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use memmap2::{Mmap, MmapOptions};

use crate::file::OpenFile;
use crate::fs::FileMeta;
use crate::sys::RawRegion;

/// What a path resolved to, as kept in the cache.
#[derive(Clone)]
pub enum Cached {
    File { file: Rc<OpenFile>, is_index: bool },
    Redirect,
}

/// Answer of [`PathCache::get`].
pub enum PathHit {
    /// Use it.
    Fresh(Cached),
    /// Use it, and have it revalidated in the background.
    Aging(Cached),
    /// Not cached, or too old to trust.
    Miss,
}

struct Slot {
    path: String,
    ends_with_slash: bool,
    value: Cached,
    validated_at: Instant,
    referenced: bool,
    revalidating: bool,
}

pub struct PathCache {
    /// Path -> slot index, for paths without and with a trailing slash.
    index: HashMap<String, [Option<usize>; 2]>,
    slots: Vec<Slot>,
    capacity: usize,
    hand: usize,
    freshness: Duration,
    /// Slots emptied by `remove`.
    free: Vec<usize>,
}

impl PathCache {
    pub fn new(capacity: usize, freshness: Duration) -> PathCache {
        PathCache {
            index: HashMap::new(),
            slots: Vec::new(),
            capacity: capacity.max(1),
            hand: 0,
            freshness,
            free: Vec::new(),
        }
    }

    fn slot_of(&self, path: &str, ends_with_slash: bool) -> Option<usize> {
        self.index
            .get(path)
            .and_then(|pair| pair[usize::from(ends_with_slash)])
    }

    /// Looks `path` up; an `Aging` answer is given once per revalidation.
    pub fn get(&mut self, path: &str, ends_with_slash: bool, now: Instant) -> PathHit {
        let Some(i) = self.slot_of(path, ends_with_slash) else {
            return PathHit::Miss;
        };
        let slot = &mut self.slots[i];
        let age = now.saturating_duration_since(slot.validated_at);
        if age >= self.freshness {
            return PathHit::Miss;
        }
        slot.referenced = true;
        if age >= self.freshness / 2 && !slot.revalidating {
            slot.revalidating = true;
            return PathHit::Aging(slot.value.clone());
        }
        PathHit::Fresh(slot.value.clone())
    }

    /// The file currently cached for `path`, if it is the same file as `meta`
    /// describes (same inode, size and mtime): then its mapping and cached
    /// head stay valid and it is reused.
    pub fn same_file(
        &self,
        path: &str,
        ends_with_slash: bool,
        meta: &FileMeta,
    ) -> Option<Rc<OpenFile>> {
        let i = self.slot_of(path, ends_with_slash)?;
        match &self.slots[i].value {
            Cached::File { file, .. } if file.meta == *meta => Some(Rc::clone(file)),
            _ => None,
        }
    }

    /// Records a (re)validated answer for `path`.
    pub fn insert(&mut self, path: &str, ends_with_slash: bool, value: Cached, now: Instant) {
        if let Some(i) = self.slot_of(path, ends_with_slash) {
            let slot = &mut self.slots[i];
            slot.value = value;
            slot.validated_at = now;
            slot.revalidating = false;
            return;
        }
        let slot = Slot {
            path: path.to_owned(),
            ends_with_slash,
            value,
            validated_at: now,
            referenced: false,
            revalidating: false,
        };
        let i = if let Some(free) = self.free.pop() {
            self.slots[free] = slot;
            free
        } else if self.slots.len() < self.capacity {
            self.slots.push(slot);
            self.slots.len() - 1
        } else {
            // Every slot is in use (free ones are taken first), so the
            // clock never picks a freed slot.
            let victim = self.clock_victim();
            self.unindex(victim);
            self.slots[victim] = slot;
            victim
        };
        self.index.entry(path.to_owned()).or_insert([None, None])[usize::from(ends_with_slash)] =
            Some(i);
    }

    /// Forgets `path` (deleted, or no longer a file).
    pub fn remove(&mut self, path: &str, ends_with_slash: bool) {
        if let Some(i) = self.slot_of(path, ends_with_slash) {
            self.unindex(i);
            // Drop the file now (its descriptor pins a deleted inode) and
            // reuse the slot before any other.
            self.slots[i].value = Cached::Redirect;
            self.slots[i].path = String::new();
            self.free.push(i);
        }
    }

    /// A revalidation could not be done; let the next request try again.
    pub fn revalidation_failed(&mut self, path: &str, ends_with_slash: bool) {
        if let Some(i) = self.slot_of(path, ends_with_slash) {
            self.slots[i].revalidating = false;
        }
    }

    fn clock_victim(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            if !std::mem::take(&mut self.slots[i].referenced) {
                return i;
            }
        }
    }

    fn unindex(&mut self, i: usize) {
        let slot = &self.slots[i];
        if let Some(pair) = self.index.get_mut(slot.path.as_str()) {
            let which = usize::from(slot.ends_with_slash);
            if pair[which] == Some(i) {
                pair[which] = None;
            }
            if pair == &[None, None] {
                self.index.remove(slot.path.as_str());
            }
        }
    }

    pub fn len(&self) -> usize {
        self.index
            .values()
            .map(|pair| pair.iter().flatten().count())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Bytes mapped as one unit: a multiple of the residency window, so a
/// window never straddles two chunks.
pub const CHUNK: u64 = 8 * crate::residency::WINDOW;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ChunkKey {
    dev: u64,
    ino: u64,
    mtime: (i64, u32),
    size: u64,
    index: u64,
}

struct Chunk {
    key: ChunkKey,
    map: Mmap,
    referenced: bool,
}

/// Mapped chunks, evicted by a clock (second chance): a hit only sets a bit.
pub struct MapCache {
    budget: u64,
    mapped: u64,
    index: HashMap<ChunkKey, usize>,
    slots: Vec<Option<Chunk>>,
    free: Vec<usize>,
    hand: usize,
}

impl MapCache {
    /// `budget`: bytes that may stay mapped (0: map on every use).
    pub fn new(budget: u64) -> MapCache {
        MapCache {
            budget,
            mapped: 0,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
        }
    }

    /// Mapped addresses of `start..end` of `file`, which must lie in one
    /// chunk. The region is valid until the next call (it may be unmapped
    /// then), which is all the kernel calls using it need.
    pub fn region(&mut self, file: &OpenFile, start: u64, end: u64) -> Option<RawRegion> {
        let index = start / CHUNK;
        let end = end.min(file.len());
        if start >= end || (end - 1) / CHUNK != index {
            return None;
        }
        if self.budget == 0 {
            // The cache is off: every use maps anew.
            while !self.index.is_empty() {
                self.evict_one();
            }
        }
        let meta = &file.meta;
        let key = ChunkKey {
            dev: meta.dev,
            ino: meta.ino,
            mtime: (meta.mtime_secs, meta.mtime_nsec),
            size: meta.size,
            index,
        };
        let slot = match self.index.get(&key) {
            Some(&slot) => slot,
            None => self.map_chunk(file, key)?,
        };
        let chunk = self.slots[slot].as_mut()?;
        chunk.referenced = true;
        // Pointer arithmetic only: the memory is not touched.
        let ptr = chunk
            .map
            .as_ptr()
            .wrapping_add((start - index * CHUNK) as usize);
        Some(RawRegion {
            ptr,
            len: (end - start) as usize,
        })
    }

    fn map_chunk(&mut self, file: &OpenFile, key: ChunkKey) -> Option<usize> {
        let chunk_start = key.index * CHUNK;
        let len = CHUNK.min(file.len() - chunk_start);
        // Make room first, so the new chunk is never its own victim.
        while self.mapped + len > self.budget && !self.index.is_empty() {
            self.evict_one();
        }
        // SAFETY: read-only mapping whose bytes user code never reads
        // (addresses go to writev and mincore only), so a concurrent
        // truncation cannot fault this process. Offset and length are page
        // aligned and inside the file as the helper saw it.
        let map = unsafe {
            MmapOptions::new()
                .offset(chunk_start)
                .len(len as usize)
                .map(file.fd().as_raw_fd())
        }
        .ok()?;
        self.mapped += len;
        let chunk = Some(Chunk {
            key,
            map,
            referenced: false,
        });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = chunk;
                slot
            }
            None => {
                self.slots.push(chunk);
                self.slots.len() - 1
            }
        };
        self.index.insert(key, slot);
        Some(slot)
    }

    /// Unmaps the first chunk the clock hand finds not referenced since its last pass.
    fn evict_one(&mut self) {
        loop {
            let slot = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let Some(chunk) = &mut self.slots[slot] else {
                continue;
            };
            if std::mem::take(&mut chunk.referenced) {
                continue;
            }
            if let Some(chunk) = self.slots[slot].take() {
                self.index.remove(&chunk.key);
                self.mapped -= chunk.map.len() as u64;
                self.free.push(slot);
            }
            return;
        }
    }

    pub fn mapped_bytes(&self) -> u64 {
        self.mapped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::OwnedFd;

    use crate::residency::Probe;

    fn open_file(len: usize) -> Rc<OpenFile> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; len]).unwrap();
        let st = crate::fs::file_meta(std::os::fd::AsFd::as_fd(&f)).unwrap();
        Rc::new(OpenFile::new(OwnedFd::from(f), st, Probe::Mincore))
    }

    fn file_entry(file: &Rc<OpenFile>) -> Cached {
        Cached::File {
            file: Rc::clone(file),
            is_index: false,
        }
    }

    #[test]
    fn path_cache_ages_then_expires() {
        let t0 = Instant::now();
        let mut cache = PathCache::new(4, Duration::from_secs(1));
        let f = open_file(10);
        cache.insert("a.txt", false, file_entry(&f), t0);
        assert!(matches!(cache.get("a.txt", false, t0), PathHit::Fresh(_)));
        assert!(
            matches!(cache.get("a.txt", true, t0), PathHit::Miss),
            "slash variant is a different entry"
        );
        let half = t0 + Duration::from_millis(600);
        assert!(matches!(cache.get("a.txt", false, half), PathHit::Aging(_)));
        assert!(
            matches!(cache.get("a.txt", false, half), PathHit::Fresh(_)),
            "one revalidation at a time"
        );
        assert!(matches!(
            cache.get("a.txt", false, t0 + Duration::from_secs(1)),
            PathHit::Miss
        ));
        cache.insert("a.txt", false, Cached::Redirect, half);
        assert!(matches!(
            cache.get("a.txt", false, half),
            PathHit::Fresh(Cached::Redirect)
        ));
        cache.remove("a.txt", false);
        assert!(matches!(cache.get("a.txt", false, half), PathHit::Miss));
        assert!(cache.is_empty());
    }

    #[test]
    fn path_cache_evicts_unreferenced_entries_first() {
        let t0 = Instant::now();
        let mut cache = PathCache::new(2, Duration::from_secs(60));
        let f = open_file(1);
        cache.insert("a", false, file_entry(&f), t0);
        cache.insert("b", false, file_entry(&f), t0);
        assert!(matches!(cache.get("a", false, t0), PathHit::Fresh(_))); // a referenced
        cache.insert("c", false, file_entry(&f), t0); // evicts b
        assert!(matches!(cache.get("a", false, t0), PathHit::Fresh(_)));
        assert!(matches!(cache.get("b", false, t0), PathHit::Miss));
        assert!(matches!(cache.get("c", false, t0), PathHit::Fresh(_)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn removing_a_path_closes_its_file_and_frees_its_slot() {
        let t0 = Instant::now();
        let mut cache = PathCache::new(2, Duration::from_secs(60));
        let f = open_file(3);
        cache.insert("gone", false, file_entry(&f), t0);
        assert_eq!(Rc::strong_count(&f), 2);
        cache.remove("gone", false);
        assert_eq!(Rc::strong_count(&f), 1, "the cache let go of the file");
        cache.insert("a", false, file_entry(&f), t0);
        cache.insert("b", false, file_entry(&f), t0);
        assert!(matches!(cache.get("a", false, t0), PathHit::Fresh(_)));
        assert!(
            matches!(cache.get("b", false, t0), PathHit::Fresh(_)),
            "the freed slot was reused, nothing evicted"
        );
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn same_file_reuses_only_an_unchanged_file() {
        let t0 = Instant::now();
        let mut cache = PathCache::new(2, Duration::from_secs(60));
        let f = open_file(5);
        cache.insert("a", false, file_entry(&f), t0);
        assert!(cache.same_file("a", false, &f.meta).is_some());
        let changed = FileMeta { size: 6, ..f.meta };
        assert!(cache.same_file("a", false, &changed).is_none());
    }

    #[test]
    fn map_cache_stays_under_budget_and_maps_in_chunks() {
        let f = open_file(3 * CHUNK as usize);
        let mut maps = MapCache::new(CHUNK);
        assert!(maps.region(&f, 0, 100).is_some());
        assert_eq!(maps.mapped_bytes(), CHUNK);
        assert!(maps.region(&f, CHUNK, CHUNK + 10).is_some());
        assert_eq!(maps.mapped_bytes(), CHUNK, "the older chunk was unmapped");
        assert!(
            maps.region(&f, CHUNK - 1, CHUNK + 1).is_none(),
            "a region never straddles chunks"
        );
        assert!(
            maps.region(&f, 3 * CHUNK, 3 * CHUNK + 1).is_none(),
            "past the end"
        );
        let mut unbounded = MapCache::new(u64::MAX);
        for i in 0..3 {
            assert!(unbounded.region(&f, i * CHUNK, i * CHUNK + 1).is_some());
        }
        assert_eq!(unbounded.mapped_bytes(), 3 * CHUNK);
    }

    #[test]
    fn map_cache_with_no_budget_keeps_only_the_chunk_in_use() {
        let f = open_file(2 * CHUNK as usize);
        let mut maps = MapCache::new(0);
        assert!(maps.region(&f, 0, 10).is_some());
        assert!(maps.region(&f, CHUNK, CHUNK + 10).is_some());
        assert_eq!(maps.mapped_bytes(), CHUNK);
    }
}
