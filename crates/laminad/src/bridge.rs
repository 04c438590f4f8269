//! Byte streams between the async network edge and the synchronous data path: chunks
//! travel over a bounded channel into a blocking `Read`.

use std::io::Read;

use tokio::sync::mpsc;

/// A blocking `Read` over chunks arriving on a channel; an `Err` item ends the stream
/// with that error, a closed channel is end of file. Chunks are any byte container, so
/// network buffers (`bytes::Bytes`) pass through without a copy.
pub struct ChannelReader<T = Vec<u8>> {
    rx: mpsc::Receiver<std::io::Result<T>>,
    buf: Option<T>,
    pos: usize,
}

impl<T: AsRef<[u8]>> ChannelReader<T> {
    /// Reads what is sent on `rx`.
    pub fn new(rx: mpsc::Receiver<std::io::Result<T>>) -> Self {
        ChannelReader {
            rx,
            buf: None,
            pos: 0,
        }
    }
}

impl<T: AsRef<[u8]>> Read for ChannelReader<T> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(chunk) = &self.buf {
                let chunk = &chunk.as_ref()[self.pos..];
                if !chunk.is_empty() {
                    let n = out.len().min(chunk.len());
                    out[..n].copy_from_slice(&chunk[..n]);
                    self.pos += n;
                    return Ok(n);
                }
            }
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = Some(chunk);
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunks_in_order_then_the_error_or_end() {
        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(bytes::Bytes::from_static(b"ab"))).unwrap();
        tx.try_send(Ok(bytes::Bytes::new())).unwrap();
        tx.try_send(Ok(bytes::Bytes::from_static(b"cde"))).unwrap();
        drop(tx);
        let mut out = String::new();
        ChannelReader::new(rx).read_to_string(&mut out).unwrap();
        assert_eq!(out, "abcde");

        let (tx, rx) = mpsc::channel::<std::io::Result<Vec<u8>>>(4);
        tx.try_send(Ok(b"x".to_vec())).unwrap();
        tx.try_send(Err(std::io::Error::other("broken off")))
            .unwrap();
        let mut r = ChannelReader::new(rx);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 1);
        assert_eq!(r.read(&mut buf).unwrap_err().to_string(), "broken off");
    }
}
