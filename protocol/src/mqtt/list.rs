//! Lists inside packets: validated wire bytes after parsing, or a caller slice to emit.

use super::packet::{QoS, SubAckCode};
use super::wire::Reader;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Source<'a, T> {
    /// Already validated by `parse`.
    Wire(&'a [u8]),
    Slice(&'a [T]),
}

/// The (filter, requested QoS) pairs of a SUBSCRIBE.
#[derive(Debug, Clone, Copy)]
pub struct SubscribeFilters<'a>(Source<'a, (&'a str, QoS)>);

/// The return codes of a SUBACK.
#[derive(Debug, Clone, Copy)]
pub struct SubAckCodes<'a>(Source<'a, SubAckCode>);

/// The filters of an UNSUBSCRIBE.
#[derive(Debug, Clone, Copy)]
pub struct UnsubscribeFilters<'a>(Source<'a, &'a str>);

impl<'a> SubscribeFilters<'a> {
    pub fn from_slice(s: &'a [(&'a str, QoS)]) -> Self {
        SubscribeFilters(Source::Slice(s))
    }

    pub(crate) fn from_wire(b: &'a [u8]) -> Self {
        SubscribeFilters(Source::Wire(b))
    }

    /// The filters in order, with their requested QoS.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, QoS)> + 'a {
        self.iter_options()
            .filter_map(|(f, o)| QoS::from_bits(o & 0b11).map(|q| (f, q)))
    }

    /// The filters with their whole options byte (version 5 adds bits above the QoS).
    pub fn iter_options(&self) -> impl Iterator<Item = (&'a str, u8)> + 'a {
        let (wire, slice): (&'a [u8], &'a [(&'a str, QoS)]) = match self.0 {
            Source::Wire(b) => (b, &[]),
            Source::Slice(s) => (&[], s),
        };
        let mut r = Reader::new(wire, "SUBSCRIBE");
        let from_wire = core::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            Some((r.string("topic filter").ok()?, r.u8("options").ok()?))
        });
        from_wire.chain(slice.iter().map(|&(f, q)| (f, q as u8)))
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> SubAckCodes<'a> {
    pub fn from_slice(s: &'a [SubAckCode]) -> Self {
        SubAckCodes(Source::Slice(s))
    }

    pub(crate) fn from_wire(b: &'a [u8]) -> Self {
        SubAckCodes(Source::Wire(b))
    }

    pub fn iter(&self) -> impl Iterator<Item = SubAckCode> + 'a {
        let (wire, slice): (&'a [u8], &'a [SubAckCode]) = match self.0 {
            Source::Wire(b) => (b, &[]),
            Source::Slice(s) => (&[], s),
        };
        wire.iter()
            .filter_map(|&b| SubAckCode::from_byte(b))
            .chain(slice.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> UnsubscribeFilters<'a> {
    pub fn from_slice(s: &'a [&'a str]) -> Self {
        UnsubscribeFilters(Source::Slice(s))
    }

    pub(crate) fn from_wire(b: &'a [u8]) -> Self {
        UnsubscribeFilters(Source::Wire(b))
    }

    pub fn iter(&self) -> impl Iterator<Item = &'a str> + 'a {
        let (wire, slice): (&'a [u8], &'a [&'a str]) = match self.0 {
            Source::Wire(b) => (b, &[]),
            Source::Slice(s) => (&[], s),
        };
        let mut r = Reader::new(wire, "UNSUBSCRIBE");
        let from_wire = core::iter::from_fn(move || {
            if r.is_empty() {
                return None;
            }
            r.string("topic filter").ok()
        });
        from_wire.chain(slice.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for SubscribeFilters<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl PartialEq for SubAckCodes<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl PartialEq for UnsubscribeFilters<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for SubscribeFilters<'_> {}
impl Eq for SubAckCodes<'_> {}
impl Eq for UnsubscribeFilters<'_> {}
