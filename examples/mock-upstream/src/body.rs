//! The response body: either one whole buffer (sent with a `content-length`) or a server-sent
//! event stream whose chunks go out as separate body frames, optionally spaced by a delay and
//! optionally ending in an injected abort that makes hyper drop the connection mid-stream.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Body of every response the mock sends.
pub struct MockBody {
    kind: Kind,
}

enum Kind {
    Full(Option<Bytes>),
    Stream(SseStream),
}

/// A pull-based stream of pre-rendered frames: no task and no channel per request, yet each
/// frame is handed to hyper on its own (so it becomes its own chunk on the wire).
struct SseStream {
    frames: VecDeque<Bytes>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    sleeping: bool,
    abort: Abort,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Abort {
    /// End the body normally after the last frame.
    No,
    /// Yield once (so hyper flushes what it has buffered), then fail.
    Flush,
    /// Fail now: hyper treats a body error as fatal and closes the connection.
    Now,
}

impl MockBody {
    /// A body of one buffer.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(bytes.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }

    /// A streamed body: `frames` in order, `delay` between consecutive frames, and if `abort`
    /// the body fails after the last frame instead of ending (the connection is dropped).
    pub fn stream(frames: VecDeque<Bytes>, delay: Option<Duration>, abort: bool) -> Self {
        Self {
            kind: Kind::Stream(SseStream {
                frames,
                delay: delay.filter(|d| !d.is_zero()),
                sleep: None,
                sleeping: false,
                abort: if abort { Abort::Flush } else { Abort::No },
            }),
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(stream) => stream.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Stream(stream) => stream.frames.is_empty() && stream.abort == Abort::No,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

impl SseStream {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.sleeping {
            if let Some(sleep) = self.sleep.as_mut()
                && sleep.as_mut().poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            self.sleeping = false;
        }
        if let Some(frame) = self.frames.pop_front() {
            if let Some(delay) = self.delay
                && !self.frames.is_empty()
            {
                let deadline = Instant::now() + delay;
                match self.sleep.as_mut() {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                self.sleeping = true;
            }
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        match self.abort {
            Abort::No => Poll::Ready(None),
            Abort::Flush => {
                self.abort = Abort::Now;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Abort::Now => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock-upstream: injected connection drop",
            )))),
        }
    }
}
