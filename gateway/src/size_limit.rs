//! A message over the size limit is RESOURCE_EXHAUSTED, as gRPC's own convention and this API's
//! contract say. tonic refuses it before any handler runs, with OUT_OF_RANGE, in the headers of
//! a trailers-only answer or in the trailers of a stream; so the status is rewritten on its way
//! out, in both places.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tonic::codegen::http::{HeaderMap, HeaderValue, Response};

/// gRPC status codes as they travel in `grpc-status`.
const OUT_OF_RANGE: &[u8] = b"11";
const RESOURCE_EXHAUSTED: &str = "8";

pub(crate) fn too_large_is_resource_exhausted(
    mut response: Response<tonic::body::Body>,
) -> Response<tonic::body::Body> {
    rewrite(response.headers_mut());
    response.map(|body| tonic::body::Body::new(RewriteTrailers { inner: body }))
}

fn rewrite(headers: &mut HeaderMap) {
    let out_of_range = headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == OUT_OF_RANGE);
    let too_large = headers
        .get("grpc-message")
        .and_then(|message| message.to_str().ok())
        // Percent-encoded on the wire (`%20` for each space).
        .is_some_and(|message| {
            message
                .replace("%20", " ")
                .contains("message length too large")
        });
    if out_of_range && too_large {
        headers.insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
}

/// A response body whose trailers get [`rewrite`].
struct RewriteTrailers {
    inner: tonic::body::Body,
}

impl Body for RewriteTrailers {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let inner = Pin::new(&mut self.get_mut().inner);
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    rewrite(&mut trailers);
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
