//! The response body type: a whole buffer, or a channel a streaming task writes frames into.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;

/// Every response the gateway sends.
pub enum GatewayBody {
    Full(Option<Bytes>),
    Channel(mpsc::Receiver<Bytes>),
}

impl GatewayBody {
    pub fn full(b: impl Into<Bytes>) -> Self {
        GatewayBody::Full(Some(b.into()))
    }

    /// A streamed body and the sender that feeds it; dropping the sender ends the body.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Bytes>, Self) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, GatewayBody::Channel(rx))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            GatewayBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            GatewayBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, GatewayBody::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            GatewayBody::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            GatewayBody::Full(None) => http_body::SizeHint::with_exact(0),
            GatewayBody::Channel(_) => http_body::SizeHint::default(),
        }
    }
}
