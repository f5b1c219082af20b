//! [`IdTable`]: per-request state indexed directly by request ID, for the
//! reactor, the lifecycle and the engine's executor.
//!
//! Client requests use odd IDs only, so the 32768 possible IDs are split
//! into 1024 pages of 32; a page is allocated when one of its IDs is first
//! used, and the page directory grows only as far as the highest page
//! used (clients that allocate IDs from the bottom need a handful of
//! entries). Emptied pages are kept, so that a busy connection does not
//! allocate, initialise and free a page per request:
//! - up to [`SPARE_PAGES`] stay where they are, for their IDs' next use: a
//!   client that reuses its lowest IDs, answered a batch or one request at
//!   a time, neither reallocates nor even moves its pages;
//! - beyond that, the page emptied last stays where it is too, until a
//!   page is needed elsewhere: then it moves there, as it is. A client
//!   that walks through the whole ID space (the engine's client,
//!   Mercurial's), answered one request at a time, reuses it in place for
//!   the 32 IDs of a page and moves a pointer once per page;
//! - the pages it displaces, up to [`DETACHED_PAGES`], are kept detached,
//!   for the next pages needed (a window of requests in flight moving
//!   through the ID space empties a page behind it as it needs one ahead).
//!
//! Any page emptied beyond both is freed. A lookup is two array
//! indexings, with no hashing, no probing and no rehashing as IDs come and
//! go on the per-frame path.

/// Odd IDs per page: small, because a connection that has been used keeps
/// an emptied page of each table (512 bytes for the reactor's and the
/// lifecycle's 16-byte records).
const PAGE: usize = 32;
/// Emptied pages kept in place: as many as a window of 256 requests spans.
const SPARE_PAGES: usize = 8;
/// Emptied pages kept detached, beyond those: enough for a window moving
/// through the ID space, where a page empties behind it as one is needed
/// ahead.
const DETACHED_PAGES: usize = 2;

struct Page<V> {
    slots: [Option<V>; PAGE],
    used: usize,
}

impl<V> Page<V> {
    fn new() -> Box<Page<V>> {
        Box::new(Page {
            slots: std::array::from_fn(|_| None),
            used: 0,
        })
    }
}

/// Values by odd request ID (client-started requests). Even IDs are never
/// stored: a lookup of one finds nothing, and inserting one is a bug of the
/// caller. See the module documentation for the layout.
///
/// ```
/// use wiremux_proto::IdTable;
///
/// let mut t = IdTable::default();
/// t.insert(7, "seven");
/// assert_eq!(t.get(7), Some(&"seven"));
/// assert_eq!(t.get(6), None);
/// assert_eq!(t.len(), 1);
/// assert_eq!(t.remove(7), Some("seven"));
/// assert!(t.is_empty());
/// ```
pub struct IdTable<V> {
    /// The page directory, as long as the highest page used so far.
    pages: Vec<Option<Box<Page<V>>>>,
    /// Pages in the directory that hold nothing, at most `SPARE_PAGES`,
    /// besides the floating one.
    empty: usize,
    /// The page emptied last beyond those, still in the directory: moved
    /// wherever a page is needed next.
    floating: Option<usize>,
    /// Emptied pages, detached, for the next page needed: at most
    /// `DETACHED_PAGES`.
    detached: Vec<Box<Page<V>>>,
    /// Values stored.
    len: usize,
}

impl<V> Default for IdTable<V> {
    fn default() -> Self {
        IdTable {
            pages: Vec::new(),
            empty: 0,
            floating: None,
            detached: Vec::new(),
            len: 0,
        }
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for IdTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Page and position of an odd ID.
fn locate(id: u16) -> Option<(usize, usize)> {
    (id % 2 == 1).then(|| {
        let index = usize::from(id >> 1);
        (index / PAGE, index % PAGE)
    })
}

impl<V> IdTable<V> {
    /// The value for `id`, if any.
    #[inline]
    pub fn get(&self, id: u16) -> Option<&V> {
        let (page, at) = locate(id)?;
        self.pages.get(page)?.as_ref()?.slots[at].as_ref()
    }

    /// The value for `id`, if any, to change.
    #[inline]
    pub fn get_mut(&mut self, id: u16) -> Option<&mut V> {
        let (page, at) = locate(id)?;
        self.pages.get_mut(page)?.as_mut()?.slots[at].as_mut()
    }

    /// Stores `value` for `id`; returns what was there.
    ///
    /// # Panics
    /// If `id` is even.
    #[inline(always)]
    pub fn insert(&mut self, id: u16, value: V) -> Option<V> {
        let (index, at) = locate(id).expect("only odd request IDs are stored");
        if index >= self.pages.len() {
            self.pages.resize_with(index + 1, || None);
        }
        let page = match &mut self.pages[index] {
            Some(page) => {
                if page.used == 0 {
                    // An emptied page kept in place is in use again.
                    if self.floating == Some(index) {
                        self.floating = None;
                    } else {
                        self.empty -= 1;
                    }
                }
                page
            }
            None => self.attach(index),
        };
        let old = page.slots[at].replace(value);
        if old.is_none() {
            page.used += 1;
            self.len += 1;
        }
        old
    }

    /// Takes the value for `id` out; an emptied page is kept in place,
    /// detached or freed.
    #[inline]
    pub fn remove(&mut self, id: u16) -> Option<V> {
        let (index, at) = locate(id)?;
        let page = self.pages.get_mut(index)?.as_mut()?;
        let old = page.slots[at].take()?;
        page.used -= 1;
        self.len -= 1;
        if page.used == 0 {
            self.release(index);
        }
        Some(old)
    }

    /// Keeps only the entries for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u16, &V) -> bool) {
        for index in 0..self.pages.len() {
            let Some(page) = self.pages[index].as_mut() else {
                continue;
            };
            if page.used == 0 {
                // Emptied before, and kept.
                continue;
            }
            for (at, slot) in page.slots.iter_mut().enumerate() {
                if slot.as_ref().is_some_and(|v| !keep(id_of(index, at), v)) {
                    *slot = None;
                    page.used -= 1;
                    self.len -= 1;
                }
            }
            if page.used == 0 {
                self.release(index);
            }
        }
    }

    /// Values stored.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no value is stored.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every value (emptied pages are kept as by `remove`).
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.retain(|_, _| false);
        }
    }

    /// Every entry, in ID order.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &V)> + '_ {
        self.pages.iter().enumerate().flat_map(|(index, page)| {
            page.iter().flat_map(move |page| {
                page.slots
                    .iter()
                    .enumerate()
                    .filter_map(move |(at, v)| v.as_ref().map(|v| (id_of(index, at), v)))
            })
        })
    }

    /// Keeps an emptied page in place, as a spare or as the floating one.
    #[inline]
    fn release(&mut self, index: usize) {
        if self.empty < SPARE_PAGES {
            self.empty += 1;
        } else if self.floating.is_none() {
            // The floating page was just reused in place (the usual case).
            self.floating = Some(index);
        } else {
            self.float(index);
        }
    }

    /// Makes an emptied page the floating one; the one it displaces is
    /// detached.
    #[cold]
    fn float(&mut self, index: usize) {
        if let Some(old) = self.floating.replace(index) {
            self.detach(old);
        }
    }

    /// Gives the page of `index` a page: the floating one, moved; or a
    /// detached one; or a new one.
    #[cold]
    fn attach(&mut self, index: usize) -> &mut Page<V> {
        let page = match self.floating.take() {
            Some(from) => self.pages[from]
                .take()
                .expect("the floating page is in the directory"),
            None => self.detached.pop().unwrap_or_else(Page::new),
        };
        self.pages[index].insert(page)
    }

    /// Takes an emptied page out of the directory: kept aside, or freed.
    fn detach(&mut self, index: usize) {
        if let Some(page) = self.pages[index].take() {
            if self.detached.len() < DETACHED_PAGES {
                self.detached.push(page);
            }
        }
    }
}

fn id_of(page: usize, at: usize) -> u16 {
    ((page * PAGE + at) as u16) << 1 | 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn odd_ids_only() {
        let mut t = IdTable::default();
        assert_eq!(t.insert(1, 'a'), None);
        assert_eq!(t.insert(65535, 'z'), None);
        assert_eq!(t.get(1), Some(&'a'));
        assert_eq!(t.get(0), None, "an even ID never aliases its odd neighbour");
        assert_eq!(t.get(2), None);
        assert_eq!(t.remove(2), None);
        assert_eq!(t.iter().collect::<Vec<_>>(), [(1, &'a'), (65535, &'z')]);
    }

    /// Emptied pages in the directory, the floating one included.
    fn kept_in_place(t: &IdTable<()>) -> usize {
        t.pages.iter().flatten().filter(|p| p.used == 0).count()
    }

    #[test]
    fn emptied_pages_are_kept_in_place_then_float_then_are_detached_then_freed() {
        let mut t = IdTable::default();
        let ids: Vec<u16> = (0..SPARE_PAGES + DETACHED_PAGES + 2)
            .map(|p| (p * PAGE * 2 + 1) as u16)
            .collect();
        for &id in &ids {
            t.insert(id, ());
        }
        for &id in &ids {
            t.remove(id);
        }
        assert!(t.is_empty());
        let last = SPARE_PAGES + DETACHED_PAGES + 1;
        assert_eq!(t.empty, SPARE_PAGES, "the first ones emptied stay");
        assert_eq!(t.floating, Some(last), "and the last one");
        assert_eq!(kept_in_place(&t), SPARE_PAGES + 1);
        assert!(t.pages[SPARE_PAGES..last].iter().all(Option::is_none));
        assert_eq!(t.detached.len(), DETACHED_PAGES, "two displaced are kept");
        // A page kept in place is used again there.
        t.insert(ids[0], ());
        assert_eq!((kept_in_place(&t), t.empty), (SPARE_PAGES, SPARE_PAGES - 1));
        // A page needed elsewhere is the floating one, moved as it is...
        let floating = t.pages[last].as_deref().expect("in place") as *const Page<()>;
        t.insert(65535, ());
        assert!(t.pages[last].is_none() && t.floating.is_none());
        let attached = t.pages[1023].as_deref().expect("attached");
        assert!(std::ptr::eq(attached, floating), "moved, not allocated");
        // ...then a detached one.
        let aside = &*t.detached[DETACHED_PAGES - 1] as *const Page<()>;
        t.insert(1001, ());
        assert_eq!(t.detached.len(), DETACHED_PAGES - 1);
        let attached = t.pages[1001 / 2 / PAGE].as_deref().expect("attached");
        assert!(std::ptr::eq(attached, aside), "reused, not allocated");
        // Emptied again, in ID order: the first page goes back among the
        // spares, the next floats, the last floats in its place and the
        // one it displaces is set aside.
        t.clear();
        assert_eq!((t.empty, t.floating), (SPARE_PAGES, Some(1023)));
        assert_eq!(t.detached.len(), DETACHED_PAGES);
    }

    #[test]
    fn a_client_walking_the_id_space_one_at_a_time_moves_one_page() {
        // The engine's client hands out the next free ID after the last:
        // answered one at a time, every request empties its page. The
        // first pages stay in place; past them, the emptied page floats:
        // reused in place by the next ID of its page, moved to the next
        // page when the client gets there. No page is allocated, and none
        // is set aside, after the first ones.
        let mut t = IdTable::default();
        let first = (SPARE_PAGES * PAGE * 2) as u16;
        for id in (1..first).step_by(2) {
            t.insert(id, ());
            t.remove(id);
        }
        assert_eq!((t.empty, t.floating), (SPARE_PAGES, None));
        t.insert(first + 1, ());
        t.remove(first + 1);
        let index = |id: u16| usize::from(id >> 1) / PAGE;
        let page = t.pages[index(first + 1)].as_deref().expect("floating") as *const Page<()>;
        for id in (first + 3..=u16::MAX).step_by(2) {
            t.insert(id, ());
            assert_eq!(t.floating, None, "ID {id} took the floating page");
            let attached = t.pages[index(id)].as_deref().expect("attached");
            assert!(std::ptr::eq(attached, page), "ID {id}");
            t.remove(id);
            assert_eq!(t.floating, Some(index(id)));
            assert!(t.detached.is_empty());
        }
        assert_eq!(kept_in_place(&t), SPARE_PAGES + 1);
    }

    #[test]
    fn the_directory_grows_only_as_far_as_the_highest_page_used() {
        let mut t = IdTable::default();
        t.insert(1, ());
        t.insert(2 * PAGE as u16 - 1, ());
        assert_eq!(
            t.pages.len(),
            1,
            "the first page holds IDs 1..{}",
            2 * PAGE - 1
        );
        t.insert(2 * PAGE as u16 + 1, ());
        assert_eq!(t.pages.len(), 2);
        t.insert(65535, ());
        assert_eq!(t.pages.len(), (1 << 15) / PAGE);
        assert_eq!(t.get(65535), Some(&()));
    }

    #[test]
    #[should_panic(expected = "only odd request IDs are stored")]
    fn inserting_an_even_id_is_a_bug() {
        IdTable::default().insert(4, ());
    }

    proptest! {
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec((0u8..5, any::<u16>(), any::<u8>()), 0..400)) {
            let mut table = IdTable::default();
            let mut model = BTreeMap::new();
            for (op, id, value) in ops {
                let id = id | 1;
                match op {
                    0 => prop_assert_eq!(table.insert(id, value), model.insert(id, value)),
                    1 => prop_assert_eq!(table.remove(id), model.remove(&id)),
                    2 => prop_assert_eq!(table.get(id), model.get(&id)),
                    3 if value % 16 == 0 => {
                        table.clear();
                        model.clear();
                    }
                    _ => {
                        table.retain(|_, v| v % 3 != 0);
                        model.retain(|_, v| *v % 3 != 0);
                    }
                }
                let listed: Vec<(u16, u8)> = table.iter().map(|(k, v)| (k, *v)).collect();
                let expected: Vec<(u16, u8)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(listed, expected);
                prop_assert_eq!(table.len(), model.len());
                prop_assert_eq!(table.is_empty(), model.is_empty());
                let attached = table.pages.iter().flatten();
                prop_assert_eq!(attached.map(|p| p.used).sum::<usize>(), table.len());
                let empty = table.pages.iter().flatten().filter(|p| p.used == 0).count();
                prop_assert_eq!(table.empty + usize::from(table.floating.is_some()), empty);
                prop_assert!(table.empty <= SPARE_PAGES);
                if let Some(f) = table.floating {
                    prop_assert!(table.pages[f].as_ref().is_some_and(|p| p.used == 0));
                }
                prop_assert!(table.detached.len() <= DETACHED_PAGES);
                prop_assert!(table.detached.iter().all(|p| p.used == 0 && p.slots.iter().all(Option::is_none)));
            }
        }
    }
}
