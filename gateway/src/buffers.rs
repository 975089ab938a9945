//! Taking bytes off a connection's read buffer.
//!
//! `BytesMut::split_to(..).freeze()` shares the buffer's allocation with what it hands out,
//! so the next read cannot reuse the buffer: it allocates a new one (8 KiB) while the old one
//! lives on in a request's header values. Small pieces are copied out instead, which keeps
//! the buffer its connection's own: once drained, it is read into again in place. One small
//! allocation instead of a shared header, a large allocation and the old buffer's free.

use bytes::{Buf, Bytes, BytesMut};

/// Up to this many bytes are copied out; larger pieces (a body that grew the buffer) are split
/// off, and the buffer is then replaced as it would have been anyway.
const COPY_UP_TO: usize = 8 * 1024;

/// The first `n` bytes of `buf`, taken off it.
pub fn take_front(buf: &mut BytesMut, n: usize) -> Bytes {
    if n == 0 {
        return Bytes::new();
    }
    if n > COPY_UP_TO {
        return buf.split_to(n).freeze();
    }
    let piece = Bytes::copy_from_slice(&buf[..n]);
    buf.advance(n);
    piece
}

/// All of `buf`, taken off it.
pub fn take_all(buf: &mut BytesMut) -> Bytes {
    take_front(buf, buf.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_piece_leaves_the_buffer_reusable_in_place() {
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(b"head and body");
        let before = buf.as_ptr();
        assert_eq!(take_front(&mut buf, 4), Bytes::from_static(b"head"));
        assert_eq!(take_all(&mut buf), Bytes::from_static(b" and body"));
        buf.reserve(8192);
        assert_eq!(buf.as_ptr(), before, "the same allocation, read into again");
    }

    #[test]
    fn a_large_piece_is_split_off_whole() {
        let mut buf = BytesMut::from(&vec![7u8; 3 * COPY_UP_TO][..]);
        let piece = take_front(&mut buf, 2 * COPY_UP_TO);
        assert_eq!(piece.len(), 2 * COPY_UP_TO);
        assert_eq!(buf.len(), COPY_UP_TO);
        assert!(take_front(&mut buf, 0).is_empty());
    }
}
