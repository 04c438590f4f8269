//! The one place with `unsafe` in the index: a safe wrapper around the zlib C API of
//! `libz-rs-sys` (pure Rust, the zlib-rs project flate2 already uses), for the parts
//! zran-style random access needs and flate2 does not offer: `inflate(Z_BLOCK)` with
//! `data_type` to stop at deflate block boundaries, `inflateGetDictionary` to save the
//! window there, and `inflatePrime` plus `inflateSetDictionary` to start a raw inflate in
//! the middle of a byte.

use std::ffi::CStr;
use std::io;

use libz_rs_sys as z;

/// What one [`Inflate::inflate`] call achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Step {
    /// The end of the deflate stream (and, in gzip mode, its verified trailer) was reached.
    pub stream_end: bool,
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
}

/// How [`Inflate::inflate`] flushes: `Block` also returns at the end of every deflate
/// block and of a gzip header (zlib's `Z_BLOCK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flush {
    /// `Z_NO_FLUSH`: run until the input is used up or the output is full.
    None,
    /// `Z_BLOCK`: as `None`, but also stop at block and header boundaries.
    Block,
}

/// `windowBits` for a raw deflate stream with a 32 KiB window.
pub(super) const RAW: i32 = -15;
/// `windowBits` for a gzip member (header and trailer checked) with a 32 KiB window.
pub(super) const GZIP: i32 = 31;
/// The largest deflate window.
pub(super) const WINDOW: usize = 32 << 10;

/// An inflate stream. The `z_stream` is boxed because zlib's state points back at it, so
/// it must not move after `inflateInit2_`.
pub(super) struct Inflate {
    strm: Box<z::z_stream>,
}

// SAFETY: the stream's state is owned by this value alone and holds no thread-bound
// resource; its input and output pointers are reset to null after every call, so nothing
// refers to memory of the thread that made the last call.
unsafe impl Send for Inflate {}

impl Inflate {
    /// A new stream for `window_bits` ([`RAW`] or [`GZIP`]).
    pub fn new(window_bits: i32) -> io::Result<Inflate> {
        // `Default` gives null pointers and, with the rust-allocator feature, the Rust
        // allocator functions, which is what inflateInit2_ expects.
        let mut strm = Box::<z::z_stream>::default();
        // SAFETY: `strm` is a valid, exclusively borrowed z_stream with allocator fields
        // set by Default; the version string is zlib-rs' own static NUL-terminated string
        // and the size is that of the struct the library was built with.
        let ret = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        if ret != z::Z_OK {
            return Err(io::Error::other(format!("inflateInit2 failed ({ret})")));
        }
        Ok(Inflate { strm })
    }

    /// Starts over (a new gzip member, or a raw stream), keeping the allocations.
    pub fn reset(&mut self, window_bits: i32) -> io::Result<()> {
        // SAFETY: `self.strm` was initialised by inflateInit2_ and has not moved (boxed).
        let ret = unsafe { z::inflateReset2(&mut *self.strm, window_bits) };
        self.check(ret, "inflateReset2")
    }

    /// Feeds the low `bits` bits of `value` before any input byte (`bits` ≤ 7 here): the
    /// part of the byte before a checkpoint that belongs to the block after it.
    pub fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        // SAFETY: as in `reset`; inflatePrime reads only the stream state.
        let ret = unsafe { z::inflatePrime(&mut *self.strm, i32::from(bits), i32::from(value)) };
        self.check(ret, "inflatePrime")
    }

    /// Sets the window (the last up to 32 KiB of output before the starting point) of a
    /// raw stream.
    pub fn set_dictionary(&mut self, dict: &[u8]) -> io::Result<()> {
        if dict.len() > WINDOW {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "deflate window larger than 32 KiB",
            ));
        }
        // SAFETY: as in `reset`; `dict` is a live slice of `dict.len()` (≤ 32 KiB, so it
        // fits a c_uint) readable bytes, only read during the call.
        let ret =
            unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) };
        self.check(ret, "inflateSetDictionary")
    }

    /// The current window: the last up to 32 KiB of output of this member.
    pub fn dictionary(&self) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; WINDOW];
        let mut len: u32 = 0;
        // SAFETY: `self.strm` is initialised and not moved; `buf` is writable for 32 KiB,
        // the most inflateGetDictionary ever writes, and `len` is a valid c_uint.
        let ret = unsafe { z::inflateGetDictionary(&*self.strm, buf.as_mut_ptr(), &mut len) };
        self.check(ret, "inflateGetDictionary")?;
        buf.truncate((len as usize).min(WINDOW));
        Ok(buf)
    }

    /// zlib's `data_type` after the last call: the number of unused bits in the last
    /// input byte consumed (low 3 bits), +64 while in the last block, +128 right after a
    /// block or a gzip header ended.
    pub fn data_type(&self) -> i32 {
        self.strm.data_type
    }

    /// Inflates from `input` into `output`. Data errors (corrupt stream, bad gzip
    /// checksum or length) come back as `InvalidData` with zlib's message.
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: Flush) -> io::Result<Step> {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = in_len as u32;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = out_len as u32;
        let flush = match flush {
            Flush::None => z::Z_NO_FLUSH,
            Flush::Block => z::Z_BLOCK,
        };
        // SAFETY: the stream is initialised and not moved; next_in/avail_in describe the
        // live shared slice `input` and next_out/avail_out the live exclusive slice
        // `output` (lengths clamped to what a c_uint holds), both valid for this call.
        let ret = unsafe { z::inflate(&mut *self.strm, flush) };
        let consumed = in_len - self.strm.avail_in as usize;
        let produced = out_len - self.strm.avail_out as usize;
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        match ret {
            z::Z_OK | z::Z_BUF_ERROR => Ok(Step {
                stream_end: false,
                consumed,
                produced,
            }),
            z::Z_STREAM_END => Ok(Step {
                stream_end: true,
                consumed,
                produced,
            }),
            z::Z_NEED_DICT => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "deflate stream needs a preset dictionary",
            )),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                self.message()
                    .unwrap_or_else(|| format!("inflate error {ret}")),
            )),
        }
    }

    /// zlib's message for the last error, if it set one.
    fn message(&self) -> Option<String> {
        if self.strm.msg.is_null() {
            return None;
        }
        // SAFETY: a non-null `msg` always points at one of zlib-rs' static NUL-terminated
        // messages.
        let msg = unsafe { CStr::from_ptr(self.strm.msg) };
        Some(msg.to_string_lossy().into_owned())
    }

    fn check(&self, ret: i32, what: &str) -> io::Result<()> {
        if ret == z::Z_OK {
            Ok(())
        } else {
            Err(io::Error::other(format!("{what} failed ({ret})")))
        }
    }
}

impl Drop for Inflate {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised by inflateInit2_ (a value exists only then)
        // and is ended exactly once, here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}
