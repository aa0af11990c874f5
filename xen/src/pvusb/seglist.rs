//! [`SegList`]: a request's list of per-segment things (its segments, the pages that hold
//! them, their bus addresses), inline up to the 16 a stock request carries and on the heap
//! only past that (an indirect request's up to [`super::MAX_INDIRECT_SEGMENTS`]). Stock
//! requests, the common case, then cost no allocation along the path; an indirect one, a
//! megabyte of data, costs one per list.

use alloc::vec::Vec;
use core::ops::{Deref, DerefMut};

use crate::abi::usbif::USBIF_MAX_SEGMENTS_PER_REQUEST;

/// Items kept inline.
const INLINE: usize = USBIF_MAX_SEGMENTS_PER_REQUEST;

/// A list that stays inline up to [`USBIF_MAX_SEGMENTS_PER_REQUEST`] items and moves to
/// the heap past it. Read it as a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SegList<T> {
    /// Up to 16 items, inline.
    Inline(heapless::Vec<T, INLINE>),
    /// More than 16.
    Heap(Vec<T>),
}

impl<T> Default for SegList<T> {
    fn default() -> Self {
        SegList::Inline(heapless::Vec::new())
    }
}

impl<T> SegList<T> {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `item`; the 17th moves the list to the heap.
    pub fn push(&mut self, item: T) {
        match self {
            SegList::Inline(v) => {
                if let Err(item) = v.push(item) {
                    let mut heap = Vec::with_capacity(INLINE * 2);
                    heap.extend(core::mem::take(v));
                    heap.push(item);
                    *self = SegList::Heap(heap);
                }
            }
            SegList::Heap(v) => v.push(item),
        }
    }
}

impl<T> Deref for SegList<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match self {
            SegList::Inline(v) => v,
            SegList::Heap(v) => v,
        }
    }
}

impl<T> DerefMut for SegList<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match self {
            SegList::Inline(v) => v,
            SegList::Heap(v) => v,
        }
    }
}

impl<T> Extend<T> for SegList<T> {
    fn extend<I: IntoIterator<Item = T>>(&mut self, items: I) {
        for item in items {
            self.push(item);
        }
    }
}

impl<T> FromIterator<T> for SegList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut list = SegList::new();
        list.extend(items);
        list
    }
}

/// The items of a [`SegList`], by value.
pub enum IntoIter<T> {
    /// Of an inline list.
    Inline(<heapless::Vec<T, INLINE> as IntoIterator>::IntoIter),
    /// Of a list on the heap.
    Heap(alloc::vec::IntoIter<T>),
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match self {
            IntoIter::Inline(i) => i.next(),
            IntoIter::Heap(i) => i.next(),
        }
    }
}

impl<T> IntoIterator for SegList<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        match self {
            SegList::Inline(v) => IntoIter::Inline(v.into_iter()),
            SegList::Heap(v) => IntoIter::Heap(v.into_iter()),
        }
    }
}

impl<'a, T> IntoIterator for &'a SegList<T> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut SegList<T> {
    type Item = &'a mut T;
    type IntoIter = core::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stock_request_stays_inline_and_a_bigger_one_moves_whole_to_the_heap() {
        let mut l: SegList<u32> = (0..16).collect();
        assert!(matches!(l, SegList::Inline(_)));
        l.push(16);
        assert!(matches!(l, SegList::Heap(_)));
        l.extend(17..300);
        assert_eq!(l.len(), 300);
        assert!(l.iter().copied().eq(0..300), "every item, in order");
        l[3] = 42;
        assert_eq!(l.into_iter().nth(3), Some(42));
        let small: SegList<u32> = (0..3).collect();
        assert_eq!(small.into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    }
}
