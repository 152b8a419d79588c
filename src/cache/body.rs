//! The body of a response that went upstream: passed through untouched, or
//! streamed to the client while a copy is kept for the store.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// What happens to the copy once the body ends: `Some(body)` when it ended
/// normally within the size limit, `None` when it failed, grew too large or was
/// abandoned.
pub(crate) trait Completion: Send + 'static {
    fn complete(self: Box<Self>, body: Option<Bytes>);
}

pin_project! {
    /// The body of a response from the inner service.
    ///
    /// Either the inner body untouched, or the inner body streamed as it arrives
    /// while its frames are kept (shared, not copied) up to the size limit, then
    /// joined into one buffer of the body's exact size for the store. When
    /// the client goes away before the end, the rest is read in the background so
    /// the response is still stored for the requests waiting on it.
    pub struct TeeBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Pass { #[pin] body: B },
        Tee { tee: Tee<B> },
    }
}

impl<B> fmt::Debug for TeeBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Pass { .. } => f.write_str("TeeBody::Pass"),
            Kind::Tee { .. } => f.write_str("TeeBody::Tee"),
        }
    }
}

struct Tee<B> {
    body: Option<Pin<Box<B>>>,
    chunks: Vec<Bytes>,
    size: usize,
    max: usize,
    completion: Option<Box<dyn Completion>>,
    /// Finishes the read in the background; `None` once it is the background read.
    drain: Option<fn(Tee<B>)>,
}

impl<B> TeeBody<B> {
    /// The inner body, untouched.
    pub(crate) fn pass(body: B) -> Self {
        TeeBody {
            kind: Kind::Pass { body },
        }
    }

    /// The inner body, with a copy of up to `max` bytes handed to `completion`.
    pub(crate) fn tee(body: B, max: usize, completion: Box<dyn Completion>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
    {
        TeeBody {
            kind: Kind::Tee {
                tee: Tee {
                    body: Some(Box::pin(body)),
                    chunks: Vec::new(),
                    size: 0,
                    max,
                    completion: Some(completion),
                    drain: Some(drain_in_background::<B>),
                },
            },
        }
    }
}

impl<B> Tee<B> {
    fn finish(&mut self, ended: bool) {
        let Some(completion) = self.completion.take() else {
            return;
        };
        let chunks = std::mem::take(&mut self.chunks);
        let body = ended.then(|| join(chunks));
        completion.complete(body);
    }

    fn keep(&mut self, data: &Bytes) {
        if self.completion.is_none() {
            return;
        }
        self.size += data.len();
        if self.size > self.max {
            // Too large to store: stop keeping, let the rest stream untouched.
            self.chunks = Vec::new();
            self.finish(false);
        } else if !data.is_empty() {
            self.chunks.push(data.clone());
        }
    }
}

/// Joins the kept chunks into one buffer of their exact size, even a single
/// chunk: a chunk read from the network is a slice of the connection's receive
/// buffer, and a stored slice would keep all of that buffer alive, unweighed.
/// The copy is made once per stored response; hits share the result.
fn join(chunks: Vec<Bytes>) -> Bytes {
    if chunks.is_empty() {
        return Bytes::new();
    }
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for chunk in chunks {
        out.extend_from_slice(&chunk);
    }
    out.freeze()
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Pass { body } => body.poll_frame(cx),
            KindProj::Tee { tee } => {
                let Some(body) = tee.body.as_mut() else {
                    return Poll::Ready(None);
                };
                let polled = body.as_mut().poll_frame(cx);
                let ended = body.is_end_stream();
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            tee.keep(data);
                        }
                        // Servers stop polling once the body says it has ended, so
                        // the end may never be seen as `None`: store now.
                        if ended {
                            tee.body = None;
                            tee.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => tee.finish(false),
                    Poll::Ready(None) => {
                        tee.body = None;
                        tee.finish(true);
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Pass { body } => body.is_end_stream(),
            Kind::Tee { tee } => tee.body.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Pass { body } => body.size_hint(),
            Kind::Tee { tee } => tee
                .body
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        if self.completion.is_none() {
            return;
        }
        // The client went away before the end. Finish reading in the background
        // so the copy is still stored for the requests waiting on it.
        match (self.body.take(), self.drain.take()) {
            (Some(body), Some(drain)) => drain(Tee {
                body: Some(body),
                chunks: std::mem::take(&mut self.chunks),
                size: self.size,
                max: self.max,
                completion: self.completion.take(),
                drain: None,
            }),
            _ => self.finish(false),
        }
    }
}

fn drain_in_background<B>(mut tee: Tee<B>)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        tee.finish(false);
        return;
    };
    tracing::debug!("client left before the end of a response being stored; reading on");
    handle.spawn(async move {
        while let Some(body) = tee.body.as_mut() {
            match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        tee.keep(data);
                    }
                    if tee.completion.is_none() {
                        return;
                    }
                }
                Some(Err(_)) => {
                    tee.finish(false);
                    return;
                }
                None => {
                    tee.body = None;
                    tee.finish(true);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::{Arc, Mutex};

    struct Record(Arc<Mutex<Option<Option<Bytes>>>>);

    impl Completion for Record {
        fn complete(self: Box<Self>, body: Option<Bytes>) {
            *self.0.lock().unwrap() = Some(body);
        }
    }

    #[tokio::test]
    async fn stores_when_the_body_says_it_ended_without_a_final_poll() {
        let seen = Arc::new(Mutex::new(None));
        let mut body = TeeBody::tee(
            Full::new(Bytes::from_static(b"abc")),
            16,
            Box::new(Record(seen.clone())),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert_eq!(
            *seen.lock().unwrap(),
            Some(Some(Bytes::from_static(b"abc")))
        );
    }

    #[tokio::test]
    async fn gives_the_copy_up_past_the_limit_but_streams_everything() {
        let seen = Arc::new(Mutex::new(None));
        let body = TeeBody::tee(
            Full::new(Bytes::from_static(b"abcdef")),
            4,
            Box::new(Record(seen.clone())),
        );
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
        assert_eq!(*seen.lock().unwrap(), Some(None));
    }
}
