//! Byte streams between the async network edge and the synchronous data path: chunks
//! travel over a bounded channel into a blocking `Read`.

use std::io::Read;

use tokio::sync::mpsc;

/// A blocking `Read` over chunks arriving on a channel; an `Err` item ends the stream
/// with that error, a closed channel is end of file.
pub struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl ChannelReader {
    /// Reads what is sent on `rx`.
    pub fn new(rx: mpsc::Receiver<std::io::Result<Vec<u8>>>) -> Self {
        ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
