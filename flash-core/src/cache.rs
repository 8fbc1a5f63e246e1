//! Two of Flash's three caches (the third, response heads, lives with each
//! [`OpenFile`]):
//!
//! - [`PathCache`]: request path -> resolved file (its bytes in memory or its
//!   descriptor, metadata, cached head), so a hit costs no helper round trip
//!   and no system call. Entries are trusted for half the freshness
//!   interval, revalidated by a helper in the background during the second
//!   half, and not trusted after it; an entry whose file the kernel reports
//!   changed ([`crate::watch`]) is dropped at once. The cache is bounded in
//!   entries, in descriptors held and in bytes of file contents held.
//! - [`MapCache`]: files mapped in chunks (for `mincore`), unmapped when the
//!   mapped total (whole pages) passes the budget or the number of mappings
//!   passes its cap (the paper's mapped-file cache). A budget of 0 maps on
//!   every use (the cache switched off).
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
use crate::watch::{Change, Watches};

/// What a path resolved to, as kept in the cache.
#[derive(Clone)]
pub enum Cached {
    File {
        file: Rc<OpenFile>,
        /// Computed once from the path (or the index name) it was found by.
        content_type: &'static str,
    },
    Redirect,
}

impl Cached {
    fn file(&self) -> Option<&OpenFile> {
        match self {
            Cached::File { file, .. } => Some(file),
            Cached::Redirect => None,
        }
    }
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

/// How much the path cache may hold.
#[derive(Clone, Copy, Debug)]
pub struct PathLimits {
    /// Entries.
    pub entries: usize,
    /// Open descriptors (of files not held in memory).
    pub descriptors: usize,
    /// Bytes of file contents held in memory.
    pub memory: u64,
}

struct Slot {
    path: String,
    ends_with_slash: bool,
    /// `None`: a free slot.
    value: Option<Cached>,
    /// The inotify watch reporting changes of the file, if any.
    watch: Option<i32>,
    validated_at: Instant,
    referenced: bool,
    revalidating: bool,
}

pub struct PathCache {
    /// Path -> slot index, for paths without and with a trailing slash.
    index: HashMap<String, [Option<usize>; 2]>,
    slots: Vec<Slot>,
    limits: PathLimits,
    hand: usize,
    freshness: Duration,
    /// Free slots.
    free: Vec<usize>,
    /// Entries holding a descriptor, and bytes of contents held.
    descriptors: usize,
    memory: u64,
    /// Change notification (absent where inotify is unavailable).
    watches: Option<Watches>,
    /// Watch -> the slots relying on it.
    by_watch: HashMap<i32, Vec<usize>>,
    changes: Vec<Change>,
    /// When change events were last lost (queue overflow).
    changes_lost_at: Option<Instant>,
}

impl PathCache {
    pub fn new(limits: PathLimits, freshness: Duration, watches: Option<Watches>) -> PathCache {
        PathCache {
            index: HashMap::new(),
            slots: Vec::new(),
            limits: PathLimits {
                entries: limits.entries.max(1),
                ..limits
            },
            hand: 0,
            freshness,
            free: Vec::new(),
            descriptors: 0,
            memory: 0,
            watches,
            by_watch: HashMap::new(),
            changes: Vec::new(),
            changes_lost_at: None,
        }
    }

    /// The change-notification instance, if any.
    pub fn watches(&self) -> Option<&Watches> {
        self.watches.as_ref()
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
        let Some(value) = &slot.value else {
            return PathHit::Miss;
        };
        let age = now.saturating_duration_since(slot.validated_at);
        if age >= self.freshness {
            return PathHit::Miss;
        }
        slot.referenced = true;
        if age >= self.freshness / 2 && !slot.revalidating {
            slot.revalidating = true;
            return PathHit::Aging(value.clone());
        }
        PathHit::Fresh(value.clone())
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
            Some(Cached::File { file, .. }) if file.meta == *meta => Some(Rc::clone(file)),
            _ => None,
        }
    }

    /// Records a (re)validated answer for `path`, reported changed through
    /// `watch` (if any). Not recorded when the watch may already be gone.
    pub fn insert(
        &mut self,
        path: &str,
        ends_with_slash: bool,
        value: Cached,
        now: Instant,
        watch: Option<i32>,
    ) {
        let too_big = value.file().is_some_and(|f| {
            f.memory_cost() > self.limits.memory
                || (f.holds_descriptor() && self.limits.descriptors == 0)
        });
        // Take hold of the watch first: the entry this one replaces may
        // hold the same watch, and must not remove it.
        let mut refused = too_big;
        let watch = match (watch, &mut self.watches) {
            (Some(wd), Some(watches)) if too_big => {
                watches.discard(wd);
                None
            }
            (Some(wd), Some(watches)) => {
                let adopted = watches.adopt(wd);
                refused |= !adopted;
                adopted.then_some(wd)
            }
            _ => None,
        };
        if refused {
            // Served, but not cached: too big, or possibly stale already.
            self.remove(path, ends_with_slash);
            return;
        }
        let i = match self.slot_of(path, ends_with_slash) {
            Some(i) => {
                self.detach(i);
                i
            }
            None => {
                let i = if let Some(free) = self.free.pop() {
                    free
                } else if self.slots.len() < self.limits.entries {
                    self.slots.push(Slot {
                        path: String::new(),
                        ends_with_slash: false,
                        value: None,
                        watch: None,
                        validated_at: now,
                        referenced: false,
                        revalidating: false,
                    });
                    self.slots.len() - 1
                } else {
                    // Every slot is in use (free ones are taken first).
                    let victim = self
                        .clock_victim(usize::MAX, |_| true)
                        .expect("a full cache has a victim");
                    self.detach(victim);
                    self.unindex(victim);
                    victim
                };
                let slot = &mut self.slots[i];
                slot.path.clear();
                slot.path.push_str(path);
                slot.ends_with_slash = ends_with_slash;
                slot.referenced = false;
                self.index.entry(path.to_owned()).or_insert([None, None])
                    [usize::from(ends_with_slash)] = Some(i);
                i
            }
        };
        let slot = &mut self.slots[i];
        slot.value = Some(value);
        slot.watch = watch;
        slot.validated_at = now;
        slot.revalidating = false;
        self.attach(i);
        self.enforce_limits(i);
    }

    /// Whether change events were lost after `t`: an answer found before
    /// then must not be cached.
    pub fn changes_lost_since(&self, t: Instant) -> bool {
        self.changes_lost_at.is_some_and(|lost| lost >= t)
    }

    /// An answer for `path` that is served but not cached: forgets the
    /// path and lets go of the watch that came with it.
    pub fn refuse(&mut self, path: &str, ends_with_slash: bool, watch: Option<i32>) {
        self.remove(path, ends_with_slash);
        if let (Some(wd), Some(watches)) = (watch, &mut self.watches) {
            watches.discard(wd);
        }
    }

    /// Forgets `path` (deleted, or no longer a file).
    pub fn remove(&mut self, path: &str, ends_with_slash: bool) {
        if let Some(i) = self.slot_of(path, ends_with_slash) {
            self.free_slot(i);
        }
    }

    /// A revalidation could not be done; let the next request try again.
    pub fn revalidation_failed(&mut self, path: &str, ends_with_slash: bool) {
        if let Some(i) = self.slot_of(path, ends_with_slash) {
            self.slots[i].revalidating = false;
        }
    }

    /// Drops the entries too old to be trusted, so an idle server holds no
    /// descriptors or memory for them. Returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let stale: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let slot = &self.slots[i];
                slot.value.is_some()
                    && now.saturating_duration_since(slot.validated_at) >= self.freshness
            })
            .collect();
        for &i in &stale {
            self.free_slot(i);
        }
        stale.len()
    }

    /// Closes every cached descriptor (the process ran out of them). Returns how many.
    pub fn shed_descriptors(&mut self) -> usize {
        let holding: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.holds_descriptor(i))
            .collect();
        for &i in &holding {
            self.free_slot(i);
        }
        holding.len()
    }

    /// Reads the change notifications and drops the entries of every file
    /// that changed. Returns how many entries were dropped.
    pub fn apply_changes(&mut self) -> usize {
        let Some(watches) = &mut self.watches else {
            return 0;
        };
        let mut changes = std::mem::take(&mut self.changes);
        watches.read_changes(&mut changes);
        let mut dropped = 0;
        for change in changes.drain(..) {
            match change {
                Change::Watch(wd) => {
                    for i in self.by_watch.get(&wd).cloned().unwrap_or_default() {
                        self.free_slot(i);
                        dropped += 1;
                    }
                }
                Change::Unknown => {
                    log::warn!("file change notifications overflowed; dropping the path cache");
                    // Answers on their way now may be stale, unreported.
                    self.changes_lost_at = Some(Instant::now());
                    for i in 0..self.slots.len() {
                        if self.slots[i].value.is_some() {
                            self.free_slot(i);
                            dropped += 1;
                        }
                    }
                }
            }
        }
        self.changes = changes;
        dropped
    }

    fn holds_descriptor(&self, i: usize) -> bool {
        self.slots[i]
            .value
            .as_ref()
            .and_then(Cached::file)
            .is_some_and(OpenFile::holds_descriptor)
    }

    fn free_slot(&mut self, i: usize) {
        if self.slots[i].value.is_none() {
            return;
        }
        self.detach(i);
        self.unindex(i);
        // Drop the file now (its descriptor pins a deleted inode) and reuse
        // the slot before any other.
        self.slots[i].value = None;
        self.slots[i].path = String::new();
        self.free.push(i);
    }

    /// Counts slot `i`'s value and watch (the watch is held already).
    fn attach(&mut self, i: usize) {
        let slot = &self.slots[i];
        if let Some(file) = slot.value.as_ref().and_then(Cached::file) {
            self.descriptors += usize::from(file.holds_descriptor());
            self.memory += file.memory_cost();
        }
        if let Some(wd) = slot.watch {
            // Held already (`Watches::adopt` in `insert`).
            self.by_watch.entry(wd).or_default().push(i);
        }
    }

    /// Uncounts slot `i`'s value and watch (the value stays in place).
    fn detach(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Some(file) = slot.value.as_ref().and_then(Cached::file) {
            self.descriptors -= usize::from(file.holds_descriptor());
            self.memory -= file.memory_cost();
        }
        if let Some(wd) = slot.watch.take() {
            if let Some(users) = self.by_watch.get_mut(&wd) {
                users.retain(|&u| u != i);
                if users.is_empty() {
                    self.by_watch.remove(&wd);
                }
            }
            if let Some(w) = &mut self.watches {
                w.release(wd);
            }
        }
    }

    /// Evicts other entries until the descriptor and memory limits hold;
    /// drops entry `keep` itself if it alone breaks them.
    fn enforce_limits(&mut self, keep: usize) {
        while self.descriptors > self.limits.descriptors {
            match self.clock_victim(keep, |s| {
                s.value
                    .as_ref()
                    .and_then(Cached::file)
                    .is_some_and(OpenFile::holds_descriptor)
            }) {
                Some(victim) => self.free_slot(victim),
                None => return self.free_slot(keep),
            }
        }
        while self.memory > self.limits.memory {
            match self.clock_victim(keep, |s| {
                s.value
                    .as_ref()
                    .and_then(Cached::file)
                    .is_some_and(|f| f.memory_cost() > 0)
            }) {
                Some(victim) => self.free_slot(victim),
                None => return self.free_slot(keep),
            }
        }
    }

    /// The first occupied slot (other than `keep`) matching `eligible` that the
    /// clock hand finds unreferenced since its last pass.
    fn clock_victim(&mut self, keep: usize, eligible: impl Fn(&Slot) -> bool) -> Option<usize> {
        // Two turns: the first may only clear reference bits.
        for _ in 0..2 * self.slots.len() {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[i];
            if i == keep || slot.value.is_none() || !eligible(slot) {
                continue;
            }
            if !std::mem::take(&mut slot.referenced) {
                return Some(i);
            }
        }
        None
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
        self.slots.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Descriptors held by entries.
    pub fn descriptors(&self) -> usize {
        self.descriptors
    }

    /// Bytes of file contents held by entries.
    pub fn memory(&self) -> u64 {
        self.memory
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
    /// Most mappings at once: each is a kernel VMA, and a process has at
    /// most `vm.max_map_count` of them.
    max_maps: usize,
    page: u64,
    /// Whole pages mapped, in bytes.
    mapped: u64,
    index: HashMap<ChunkKey, usize>,
    slots: Vec<Option<Chunk>>,
    free: Vec<usize>,
    hand: usize,
    /// Lookups that found their chunk mapped, and those that mapped it.
    hits: u64,
    misses: u64,
}

impl MapCache {
    /// `budget`: bytes that may stay mapped (0: map on every use), counted
    /// in whole pages; `max_maps`: most mappings at once (at least 1).
    pub fn new(budget: u64, max_maps: usize) -> MapCache {
        MapCache {
            budget,
            max_maps: max_maps.max(1),
            page: crate::sys::page_size() as u64,
            mapped: 0,
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Lookups so far: (chunk already mapped, chunk mapped for it).
    pub fn lookups(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }

    /// Mapped addresses of `start..end` of `file`, which must lie in one
    /// chunk. The region is valid until the next call (it may be unmapped
    /// then), which is all the kernel calls using it need.
    pub fn region(&mut self, file: &OpenFile, start: u64, end: u64) -> Option<RawRegion> {
        let fd = file.fd()?;
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
            Some(&slot) => {
                self.hits += 1;
                slot
            }
            None => {
                self.misses += 1;
                self.map_chunk(fd, file.len(), key)?
            }
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

    fn map_chunk(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        file_len: u64,
        key: ChunkKey,
    ) -> Option<usize> {
        let chunk_start = key.index * CHUNK;
        let len = CHUNK.min(file_len - chunk_start);
        let pages = len.div_ceil(self.page) * self.page;
        // Make room first, so the new chunk is never its own victim.
        while (self.mapped + pages > self.budget || self.index.len() >= self.max_maps)
            && !self.index.is_empty()
        {
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
                .map(fd.as_raw_fd())
        }
        .ok()?;
        self.mapped += pages;
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
                self.mapped -= (chunk.map.len() as u64).div_ceil(self.page) * self.page;
                self.free.push(slot);
            }
            return;
        }
    }

    /// Bytes mapped, in whole pages.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped
    }

    /// Mappings in place.
    pub fn mappings(&self) -> usize {
        self.index.len()
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
        Rc::new(OpenFile::with_descriptor(
            OwnedFd::from(f),
            st,
            Probe::Mincore,
        ))
    }

    fn small_file(len: usize) -> Rc<OpenFile> {
        let f = open_file(len);
        Rc::new(OpenFile::in_memory(vec![7u8; len].into(), f.meta))
    }

    fn limits(entries: usize) -> PathLimits {
        PathLimits {
            entries,
            descriptors: usize::MAX,
            memory: u64::MAX,
        }
    }

    fn cache(entries: usize, freshness: Duration) -> PathCache {
        PathCache::new(limits(entries), freshness, None)
    }

    fn file_entry(file: &Rc<OpenFile>) -> Cached {
        Cached::File {
            file: Rc::clone(file),
            content_type: "text/plain",
        }
    }

    #[test]
    fn path_cache_ages_then_expires() {
        let t0 = Instant::now();
        let mut cache = cache(4, Duration::from_secs(1));
        let f = open_file(10);
        cache.insert("a.txt", false, file_entry(&f), t0, None);
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
        cache.insert("a.txt", false, Cached::Redirect, half, None);
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
        let mut cache = cache(2, Duration::from_secs(60));
        let f = open_file(1);
        cache.insert("a", false, file_entry(&f), t0, None);
        cache.insert("b", false, file_entry(&f), t0, None);
        assert!(matches!(cache.get("a", false, t0), PathHit::Fresh(_))); // a referenced
        cache.insert("c", false, file_entry(&f), t0, None); // evicts b
        assert!(matches!(cache.get("a", false, t0), PathHit::Fresh(_)));
        assert!(matches!(cache.get("b", false, t0), PathHit::Miss));
        assert!(matches!(cache.get("c", false, t0), PathHit::Fresh(_)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn removing_a_path_closes_its_file_and_frees_its_slot() {
        let t0 = Instant::now();
        let mut cache = cache(2, Duration::from_secs(60));
        let f = open_file(3);
        cache.insert("gone", false, file_entry(&f), t0, None);
        assert_eq!(Rc::strong_count(&f), 2);
        cache.remove("gone", false);
        assert_eq!(Rc::strong_count(&f), 1, "the cache let go of the file");
        cache.insert("a", false, file_entry(&f), t0, None);
        cache.insert("b", false, file_entry(&f), t0, None);
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
        let mut cache = cache(2, Duration::from_secs(60));
        let f = open_file(5);
        cache.insert("a", false, file_entry(&f), t0, None);
        assert!(cache.same_file("a", false, &f.meta).is_some());
        let changed = FileMeta { size: 6, ..f.meta };
        assert!(cache.same_file("a", false, &changed).is_none());
    }

    #[test]
    fn map_cache_stays_under_budget_and_maps_in_chunks() {
        let f = open_file(3 * CHUNK as usize);
        let mut maps = MapCache::new(CHUNK, 100);
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
        let mut unbounded = MapCache::new(u64::MAX, 100);
        for i in 0..3 {
            assert!(unbounded.region(&f, i * CHUNK, i * CHUNK + 1).is_some());
        }
        assert_eq!(unbounded.mapped_bytes(), 3 * CHUNK);
    }

    #[test]
    fn map_cache_with_no_budget_keeps_only_the_chunk_in_use() {
        let f = open_file(2 * CHUNK as usize);
        let mut maps = MapCache::new(0, 100);
        assert!(maps.region(&f, 0, 10).is_some());
        assert!(maps.region(&f, CHUNK, CHUNK + 10).is_some());
        assert_eq!(maps.mapped_bytes(), CHUNK);
    }

    #[test]
    fn path_cache_holds_at_most_its_share_of_descriptors_and_memory() {
        let t0 = Instant::now();
        let mut paths = PathCache::new(
            PathLimits {
                entries: 100,
                descriptors: 2,
                memory: 250,
            },
            Duration::from_secs(60),
            None,
        );
        for name in ["a", "b", "c", "d"] {
            paths.insert(name, false, file_entry(&open_file(10)), t0, None);
        }
        assert_eq!(paths.descriptors(), 2);
        for name in ["s1", "s2", "s3"] {
            paths.insert(name, false, file_entry(&small_file(100)), t0, None);
        }
        assert_eq!(paths.memory(), 200, "the oldest small file made room");
        assert_eq!(paths.len(), 4);
        paths.insert("huge", false, file_entry(&small_file(300)), t0, None);
        assert!(
            matches!(paths.get("huge", false, t0), PathHit::Miss),
            "too big alone"
        );
        assert_eq!(paths.memory(), 200);
        assert_eq!(paths.shed_descriptors(), 2);
        assert_eq!(paths.descriptors(), 0);
        assert_eq!(paths.len(), 2);
        assert_eq!(paths.expire(t0 + Duration::from_secs(61)), 2);
        assert!(paths.is_empty());
        assert_eq!(paths.memory(), 0);
    }

    #[test]
    fn a_change_reported_by_the_kernel_drops_the_entry_at_once() {
        let t0 = Instant::now();
        let watches = Watches::new().unwrap();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"old").unwrap();
        let opened = std::fs::File::open(file.path()).unwrap();
        let wd = crate::watch::add_watch(watches.fd(), std::os::fd::AsFd::as_fd(&opened)).unwrap();
        let mut paths = PathCache::new(limits(10), Duration::from_secs(60), Some(watches));
        paths.insert("a", false, file_entry(&small_file(3)), t0, Some(wd));
        paths.insert("a", true, file_entry(&small_file(3)), t0, Some(wd));
        assert_eq!(paths.apply_changes(), 0);
        assert_eq!(paths.watches().unwrap().len(), 1);
        file.write_all(b"new").unwrap();
        assert_eq!(paths.apply_changes(), 2, "both entries of the file dropped");
        assert!(matches!(paths.get("a", false, t0), PathHit::Miss));
        assert!(
            paths.watches().unwrap().is_empty(),
            "watch removed with its last entry"
        );
        paths.insert("b", false, file_entry(&small_file(3)), t0, Some(wd));
        assert!(
            matches!(paths.get("b", false, t0), PathHit::Miss),
            "a removed watch is not trusted"
        );
    }

    #[test]
    fn map_cache_caps_the_number_of_mappings() {
        let files: Vec<_> = (0..5).map(|_| open_file(100)).collect();
        let mut maps = MapCache::new(u64::MAX, 3);
        for f in &files {
            assert!(maps.region(f, 0, 100).is_some());
        }
        assert_eq!(maps.mappings(), 3);
        assert_eq!(
            maps.mapped_bytes(),
            3 * crate::sys::page_size() as u64,
            "whole pages"
        );
        assert!(
            maps.region(&small_file(100), 0, 100).is_none(),
            "nothing to map"
        );
    }
}
