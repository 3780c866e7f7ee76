//! Requesting: a [`Requester`] of one topic, the bus's pool of inboxes behind [`Bus::request`],
//! and the answers ([`Response`], [`ResponseStream`]).
//!
//! An [`Inbox`] is a ring only this client reads (tethered, so responses are read in place), with
//! the writers it holds on the request rings of the topics it asked. Each exchange takes an inbox
//! for itself — one per [`Requester`], one from the bus's pool per [`Bus::request`] call, so
//! concurrent requests of one process never share one — and numbers its request; anything else
//! arriving in the inbox is dropped. An exchange that ends before its final response came (a
//! timeout, a stream dropped early, a server gone) closes its inbox rather than reuse it, so a late
//! answer can never reach a later request, and a server is never held back by an inbox nobody
//! reads: the broker retires a closed inbox and the server's writes to it fail.
//!
//! [`Bus::request`]: crate::Bus::request

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus_shm::{Deadline, LoanError, ReaderOptions, WaitStrategy, Writer};
use tracing::debug;

use super::error::RequestError;
use crate::client::bus::BusInner;
use crate::client::error::CallError;
use crate::client::pubsub::remote::RemoteMessage;
use crate::client::pubsub::{
    AttachedWriter, OwnedSample, Patience, RecvError, RingSerializer, RingSubscriber, Wait,
};
use crate::client::remote::{RemoteBus, RemoteExchange, RemoteInner};
use crate::client::schema::serialize_tagged;
use crate::client::schema::{Schema, TAG_LEN};
use crate::protocol::remote::AnswerKind;
use crate::protocol::reqrep::{
    EXCHANGE_HEADER_LEN, OpenInbox, RequestHeader, ResponseHeader, ResponseKind, Target,
};
use crate::protocol::{ErrorCode, PublisherId, RingId};
use crate::topic::{Topic, TopicError};
use rkyv::util::AlignedVec;

/// One answer, read in place in the requester's inbox (it holds its frame until dropped).
pub struct Response {
    sample: OwnedSample,
}

impl Response {
    /// An answer that came over the network for `topic`: `bytes` keep room for the exchange
    /// header in front, so the payload sits at the offset (and alignment) it has in a ring, as
    /// typed answers expect.
    pub(crate) fn remote(topic: Topic, bytes: AlignedVec<16>) -> Response {
        let message = RemoteMessage {
            topic,
            payload: bytes,
            publisher: PublisherId::REMOTE.get(),
            sequence: 0,
        };
        Response {
            sample: OwnedSample::remote(Arc::new(message)),
        }
    }

    /// The response's bytes.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.sample.payload()[EXCHANGE_HEADER_LEN..]
    }

    /// Length of the payload.
    pub fn len(&self) -> usize {
        self.payload().len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.payload().is_empty()
    }
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("len", &self.len())
            .finish()
    }
}

/// A typed answer: a [`Response`] validated as an archive of `T` and read in place.
pub struct TypedResponse<T> {
    response: Response,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for TypedResponse<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TypedResponse")
            .field(&self.response)
            .finish()
    }
}

impl<T> TypedResponse<T>
where
    T: rkyv::Archive,
    T::Archived: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<
            rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>,
        >,
{
    /// Checks `response`'s schema tag and validates it as an archive of `T`.
    fn check(response: Response, topic: &Topic) -> Result<TypedResponse<T>, RequestError> {
        let schema = Schema::of::<T>();
        let archive =
            schema
                .strip(response.payload())
                .map_err(|found| RequestError::TypeMismatch {
                    topic: topic.clone(),
                    expected: schema,
                    found: crate::client::schema::found(found),
                })?;
        match rkyv::access::<T::Archived, rkyv::rancor::BoxedError>(archive) {
            Ok(_) => Ok(TypedResponse {
                response,
                _type: std::marker::PhantomData,
            }),
            Err(e) => Err(RequestError::Invalid {
                topic: topic.clone(),
                detail: e.to_string(),
            }),
        }
    }

    /// The raw response.
    pub fn response(&self) -> &Response {
        &self.response
    }
}

impl<T: rkyv::Archive> std::ops::Deref for TypedResponse<T>
where
    T::Archived: rkyv::Portable,
{
    type Target = T::Archived;

    fn deref(&self) -> &T::Archived {
        // SAFETY: validated as an archive of `T` when this was made, and the response holds its
        // frame in place (tethered inbox) until it drops.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.response.payload()[TAG_LEN..]) }
    }
}

/// A topic with no wildcards, as requests need.
pub(super) fn exact_topic(topic: &str) -> Result<Topic, RequestError> {
    let topic = Topic::new(topic)?;
    if topic.is_wildcard() {
        return Err(RequestError::InvalidTopic(TopicError::Wildcard {
            topic: topic.into_string(),
        }));
    }
    Ok(topic)
}

/// A ring only this client reads, and its links to the servers it asked.
pub(crate) struct Inbox {
    reader: RingSubscriber,
    id: RingId,
    next_correlation: u64,
    /// Links by topic; few, so searched in order (the topic's `Arc` is compared first).
    links: Vec<(Topic, AttachedWriter)>,
}

/// What [`Requester::exchange`] was asked to send.
enum Payload<'a> {
    Copy(&'a [u8]),
    /// Up to this many bytes written in place; the function returns how many, or why it could
    /// not (then nothing is sent).
    Fill(usize, &'a mut dyn FnMut(&mut [u8]) -> Result<usize, String>),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::Copy(b) => b.len(),
            Payload::Fill(len, _) => *len,
        }
    }
}

/// Why a request was not written.
enum Unsent {
    /// The ring stayed full until the deadline.
    Timeout,
    /// Larger than the ring carries (lengths without the header).
    TooLarge { len: usize, max: usize },
    /// The ring was retired or found corrupt.
    Moved,
    /// The broker took the claim back before it was committed.
    Revoked,
    /// The payload could not be written (a typed request did not serialize).
    Unwritable(String),
}

/// Writes one request frame, `header` then the payload, with `writer`.
fn write_request(
    writer: &mut Writer,
    header: &[u8; EXCHANGE_HEADER_LEN],
    payload: &mut Payload<'_>,
    deadline: Deadline,
) -> Result<(), Unsent> {
    let len = EXCHANGE_HEADER_LEN + payload.len();
    let mut loan = writer.loan(len, deadline).map_err(|e| match e {
        LoanError::Timeout => Unsent::Timeout,
        LoanError::TooLarge { len, max } => Unsent::TooLarge {
            len: len - EXCHANGE_HEADER_LEN,
            max: max - EXCHANGE_HEADER_LEN,
        },
        _ => Unsent::Moved,
    })?;
    let buf = loan.as_mut_slice();
    buf[..EXCHANGE_HEADER_LEN].copy_from_slice(header);
    let body = &mut buf[EXCHANGE_HEADER_LEN..];
    let used = match payload {
        Payload::Copy(bytes) => {
            body.copy_from_slice(bytes);
            bytes.len()
        }
        Payload::Fill(_, fill) => match fill(body) {
            Ok(n) => n.min(body.len()),
            // The loan drops uncommitted: a skipped frame nobody sees.
            Err(why) => return Err(Unsent::Unwritable(why)),
        },
    };
    loan.commit_prefix(EXCHANGE_HEADER_LEN + used)
        .map(drop)
        .map_err(|_| Unsent::Revoked)
}

impl Inbox {
    /// Opens an inbox at the broker.
    fn open(bus: &Arc<BusInner>, topic: &Topic, wait: WaitStrategy) -> Result<Inbox, RequestError> {
        let options = ReaderOptions::default();
        let mut reader = RingSubscriber::open(Arc::clone(bus), options, 0, wait, topic.as_str())
            .map_err(|e| RequestError::Setup {
                topic: topic.clone(),
                detail: e.to_string(),
            })?;
        let opened = reader
            .attach_with(|doorbell| OpenInbox { doorbell }, |r| r.subscription)
            .map_err(|e| setup_error(topic, e))?;
        Ok(Inbox {
            reader,
            id: opened.inbox,
            next_correlation: 1,
            links: Vec::new(),
        })
    }

    /// Where the link to `topic`'s server is in `links`, if there is one.
    fn find_link(&self, topic: &Topic) -> Option<usize> {
        self.links.iter().position(|(t, _)| t.same(topic))
    }

    /// The index of the link to `topic`'s server, made if needed (and made again if its server
    /// changed).
    fn link(&mut self, bus: &Arc<BusInner>, topic: &Topic) -> Result<usize, RequestError> {
        if let Some(i) = self.find_link(topic) {
            if !self.links[i].1.ring.is_retired() {
                return Ok(i);
            }
            self.links.swap_remove(i);
        }
        {
            let request = Target {
                topic: topic.as_str().to_string(),
            };
            let link = Arc::clone(self.reader.link());
            let (reply, fds) = bus.conn.call_on(&link, request).map_err(|e| match e {
                CallError::Refused(r) if r.code == ErrorCode::NoServer => RequestError::NoServer {
                    topic: topic.clone(),
                },
                e => setup_error(topic, e),
            })?;
            let writer = AttachedWriter::attach(bus, link, fds, &reply).map_err(|detail| {
                RequestError::Setup {
                    topic: topic.clone(),
                    detail,
                }
            })?;
            self.links.push((topic.clone(), writer));
        }
        Ok(self.links.len() - 1)
    }

    /// Sends a request to `topic`'s server and returns its correlation number and the index of
    /// the server's link. Nothing was sent if this fails.
    fn send(
        &mut self,
        bus: &Arc<BusInner>,
        topic: &Topic,
        payload: &mut Payload<'_>,
        deadline: Deadline,
    ) -> Result<(u64, usize), RequestError> {
        let max = bus.max_payload() as usize - EXCHANGE_HEADER_LEN;
        if payload.len() > max {
            return Err(RequestError::TooLarge {
                topic: topic.clone(),
                len: payload.len(),
                max,
            });
        }
        let correlation = self.next_correlation;
        self.next_correlation += 1;
        let header = RequestHeader {
            inbox: self.id,
            correlation,
        }
        .encode();
        // A server that changed between our link and the write: link again, once. A request
        // taken back by the broker (this process was stopped past its unblock timeout) is sent
        // again once, if it was a copy (a filled one cannot be filled again).
        let timeout = || RequestError::Timeout {
            topic: topic.clone(),
        };
        for retry in [false, true] {
            let index = self.link(bus, topic)?;
            match write_request(&mut self.links[index].1.writer, &header, payload, deadline) {
                Ok(()) => return Ok((correlation, index)),
                Err(Unsent::Timeout) => return Err(timeout()),
                Err(Unsent::TooLarge { len, max }) => {
                    return Err(RequestError::TooLarge {
                        topic: topic.clone(),
                        len,
                        max,
                    });
                }
                Err(Unsent::Moved) if !retry => {
                    debug!(topic = %topic, "the request ring was retired; linking again");
                    self.links.swap_remove(index);
                }
                Err(Unsent::Moved) => {
                    return Err(RequestError::ServerGone {
                        topic: topic.clone(),
                    });
                }
                Err(Unsent::Revoked) if !retry && matches!(payload, Payload::Copy(_)) => {}
                Err(Unsent::Revoked) => return Err(timeout()),
                Err(Unsent::Unwritable(detail)) => {
                    return Err(RequestError::Serialize {
                        topic: topic.clone(),
                        detail,
                    });
                }
            }
        }
        Err(timeout())
    }

    /// Waits for the next frame answering `correlation`, dropping anything else. `link` is the
    /// index of the link the request went through: once its request ring is retired, or the bus
    /// reconnected to a new broker (which knows neither the inbox nor the request), and nothing
    /// more is in the inbox, the server is gone.
    fn receive(
        &mut self,
        topic: &Topic,
        correlation: u64,
        link: usize,
        deadline: Deadline,
    ) -> Result<(ResponseKind, OwnedSample), RequestError> {
        let Inbox { reader, links, .. } = self;
        let server = &links[link].1.ring;
        let stale = reader.staleness();
        let mut gone = false;
        loop {
            let patience = if gone {
                // The server's last answers were committed before the broker retired its ring:
                // one more look finds them.
                Patience::Now
            } else {
                Patience::Until(deadline)
            };
            let sample = match reader.next(patience, || server.is_retired() || stale()) {
                Ok(sample) => sample,
                Err(Wait::Stopped) if !gone => {
                    gone = true;
                    continue;
                }
                Err(Wait::Stopped | Wait::Empty) => {
                    return Err(RequestError::ServerGone {
                        topic: topic.clone(),
                    });
                }
                Err(Wait::Timeout) => {
                    return Err(RequestError::Timeout {
                        topic: topic.clone(),
                    });
                }
                Err(Wait::Failed(RecvError::HeldLimit { max, .. })) => {
                    return Err(RequestError::Setup {
                        topic: topic.clone(),
                        detail: format!("{max} responses are held; drop some to receive more"),
                    });
                }
                Err(Wait::Failed(e)) => {
                    debug!(topic = %topic, "inbox: {e}");
                    continue;
                }
            };
            match ResponseHeader::decode(sample.payload()) {
                Some((h, _)) if h.correlation == correlation => {
                    return Ok((h.kind, sample.detach()));
                }
                _ => debug!(topic = %topic, "dropped a stale or malformed response"),
            }
        }
    }
}

/// The error for `topic` when the broker could not set an exchange up.
fn setup_error(topic: &Topic, e: CallError) -> RequestError {
    if let CallError::Refused(r) = &e {
        if r.code == ErrorCode::PermissionDenied {
            return RequestError::PermissionDenied {
                topic: topic.clone(),
                message: r.message.clone(),
            };
        }
    }
    let detail = match e {
        CallError::Request(e) => e.to_string(),
        CallError::Refused(e) => format!("the broker refused: {}", e.message),
    };
    RequestError::Setup {
        topic: topic.clone(),
        detail,
    }
}

/// The bus's idle inboxes, for [`Bus::request`](crate::Bus::request) calls.
#[derive(Default)]
pub(crate) struct InboxPool {
    idle: Mutex<Vec<Inbox>>,
}

impl InboxPool {
    /// An idle inbox none of whose answers is still held: answers are given back in order, so
    /// one kept by its caller would hold up every answer read after it in the same inbox (at
    /// the held limit, a request through it would fail). Such an inbox waits here until its
    /// answers are given back.
    fn take(&self) -> Option<Inbox> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let free = idle
            .iter_mut()
            .rposition(|inbox| !inbox.reader.holds_samples())?;
        Some(idle.swap_remove(free))
    }

    fn put(&self, inbox: Inbox) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(inbox);
    }
}

/// An inbox taken from `home` for one exchange. Unless the exchange finished (its final
/// response read), the inbox is closed when this drops instead of going back.
struct Exchange {
    inbox: Option<Inbox>,
    home: Arc<InboxPool>,
    finished: bool,
}

impl Exchange {
    fn inbox(&mut self) -> &mut Inbox {
        self.inbox.as_mut().expect("present until dropped")
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let (true, Some(inbox)) = (self.finished, self.inbox.take()) {
            self.home.put(inbox);
        }
    }
}

/// Runs one exchange on `inbox`: sends, then waits for the first answer. Sets `finished` if
/// nothing was sent (the inbox is as clean as before).
fn first_answer(
    bus: &Arc<BusInner>,
    inbox: &mut Inbox,
    finished: &mut bool,
    topic: &Topic,
    payload: &mut Payload<'_>,
    deadline: Deadline,
) -> Result<(u64, usize, ResponseKind, OwnedSample), RequestError> {
    let (correlation, link) = inbox.send(bus, topic, payload, deadline).inspect_err(|_| {
        *finished = true;
    })?;
    let (kind, sample) = inbox.receive(topic, correlation, link, deadline)?;
    Ok((correlation, link, kind, sample))
}

/// A single answer from a first frame; sets `finished` if it was the exchange's last.
fn single(
    finished: &mut bool,
    topic: &Topic,
    kind: ResponseKind,
    sample: OwnedSample,
) -> Result<Response, RequestError> {
    match kind {
        ResponseKind::Single => {
            *finished = true;
            Ok(Response { sample })
        }
        // A stream where one answer was expected: its first response (the rest is dropped with
        // the inbox).
        ResponseKind::Item => Ok(Response { sample }),
        ResponseKind::End | ResponseKind::Unanswered => {
            *finished = true;
            Err(RequestError::Abandoned {
                topic: topic.clone(),
            })
        }
    }
}

/// The answers to a request answered with a stream, in order; ends after the server's end
/// marker. Each wait for the next response gives up at the timeout the request was made with
/// (counted per response).
pub struct ResponseStream {
    inner: StreamFlavor,
}

#[expect(
    clippy::large_enum_variant,
    reason = "the local stream is the common one; boxing it would allocate for every local stream"
)]
enum StreamFlavor {
    Local(LocalStream),
    Remote {
        exchange: RemoteExchange,
        done: bool,
    },
}

/// A stream of answers in a local inbox.
struct LocalStream {
    exchange: Exchange,
    topic: Topic,
    correlation: u64,
    link: usize,
    patience: Option<Duration>,
    first: Option<(ResponseKind, OwnedSample)>,
    done: bool,
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (topic, done) = match &self.inner {
            StreamFlavor::Local(s) => (&s.topic, s.done),
            StreamFlavor::Remote { exchange, done } => (exchange.topic(), *done),
        };
        f.debug_struct("ResponseStream")
            .field("topic", topic)
            .field("done", &done)
            .finish()
    }
}

impl ResponseStream {
    /// The stream of answers that come over the network in `exchange`.
    pub(crate) fn remote(exchange: RemoteExchange) -> ResponseStream {
        ResponseStream {
            inner: StreamFlavor::Remote {
                exchange,
                done: false,
            },
        }
    }

    /// The next response; `None` after the end marker (or after an error).
    pub fn next_response(&mut self) -> Option<Result<Response, RequestError>> {
        self.next_answer()
            .map(|answer| answer.map(|(_, response)| response))
    }

    /// The next response and whether it is the server's single answer or an item of a stream
    /// (what a gateway passes on).
    pub(crate) fn next_answer(&mut self) -> Option<Result<(AnswerKind, Response), RequestError>> {
        match &mut self.inner {
            StreamFlavor::Local(stream) => stream.next_answer(),
            StreamFlavor::Remote { exchange, done } => {
                if *done {
                    return None;
                }
                let topic = exchange.topic().clone();
                let outcome = match exchange.next() {
                    Ok((AnswerKind::Item, payload)) => {
                        return Some(Ok((AnswerKind::Item, Response::remote(topic, payload))));
                    }
                    Ok((AnswerKind::Single, payload)) => {
                        Some(Ok((AnswerKind::Single, Response::remote(topic, payload))))
                    }
                    Ok((AnswerKind::End, _)) => None,
                    Err(e) => Some(Err(e)),
                };
                *done = true;
                outcome
            }
        }
    }
}

impl LocalStream {
    fn next_answer(&mut self) -> Option<Result<(AnswerKind, Response), RequestError>> {
        if self.done {
            return None;
        }
        let next = match self.first.take() {
            Some(first) => Ok(first),
            None => {
                let deadline = deadline_after(self.patience);
                self.exchange
                    .inbox()
                    .receive(&self.topic, self.correlation, self.link, deadline)
            }
        };
        let outcome = match next {
            Ok((ResponseKind::Item, sample)) => {
                return Some(Ok((AnswerKind::Item, Response { sample })));
            }
            Ok((ResponseKind::Single, sample)) => {
                self.exchange.finished = true;
                Some(Ok((AnswerKind::Single, Response { sample })))
            }
            Ok((ResponseKind::End, _)) => {
                self.exchange.finished = true;
                None
            }
            Ok((ResponseKind::Unanswered, _)) => {
                self.exchange.finished = true;
                Some(Err(RequestError::Abandoned {
                    topic: self.topic.clone(),
                }))
            }
            Err(e) => Some(Err(e)),
        };
        self.done = true;
        outcome
    }
}

impl Iterator for ResponseStream {
    type Item = Result<Response, RequestError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_response()
    }
}

/// The deadline `patience` from now; none (and no clock read while waiting) without one.
fn deadline_after(patience: Option<Duration>) -> Deadline {
    match patience {
        None => Deadline::Never,
        Some(d) => Instant::now()
            .checked_add(d)
            .map_or(Deadline::Never, Deadline::At),
    }
}

/// Takes an inbox from the bus's pool (opening one if none is idle) for one exchange.
fn pooled(
    bus: &Arc<BusInner>,
    pool: &Arc<InboxPool>,
    topic: &Topic,
) -> Result<Exchange, RequestError> {
    // An inbox of a broker that is gone is dropped: its id means nothing (or someone else's
    // inbox) at the next one.
    let inbox = match pool.take().filter(|inbox| !inbox.reader.is_stale()) {
        Some(inbox) => inbox,
        None => Inbox::open(bus, topic, WaitStrategy::default())?,
    };
    Ok(Exchange {
        inbox: Some(inbox),
        home: Arc::clone(pool),
        finished: false,
    })
}

/// [`Bus::request`](crate::Bus::request) and its twins.
pub(crate) fn request(
    bus: &Arc<BusInner>,
    pool: &Arc<InboxPool>,
    topic: &str,
    payload: &[u8],
    patience: Option<Duration>,
) -> Result<Response, RequestError> {
    let topic = exact_topic(topic)?;
    let mut exchange = pooled(bus, pool, &topic)?;
    let deadline = deadline_after(patience);
    let mut payload = Payload::Copy(payload);
    let Exchange {
        inbox, finished, ..
    } = &mut exchange;
    let inbox = inbox.as_mut().expect("present until dropped");
    let (_, _, kind, sample) = first_answer(bus, inbox, finished, &topic, &mut payload, deadline)?;
    single(finished, &topic, kind, sample)
}

/// [`Bus::request`](crate::Bus::request) and its twins on a remote bus: the gateway asks.
pub(crate) fn request_remote(
    bus: &Arc<RemoteBus>,
    topic: &str,
    payload: &[u8],
    patience: Option<Duration>,
) -> Result<Response, RequestError> {
    ask_remote(bus, exact_topic(topic)?, payload, patience)
}

/// One request through the gateway, and its one answer.
fn ask_remote(
    bus: &Arc<RemoteBus>,
    topic: Topic,
    payload: &[u8],
    patience: Option<Duration>,
) -> Result<Response, RequestError> {
    let mut exchange = bus.request(topic, payload, false, patience)?;
    match exchange.next()? {
        (AnswerKind::Single | AnswerKind::Item, payload) => {
            Ok(Response::remote(exchange.topic().clone(), payload))
        }
        (AnswerKind::End, _) => Err(RequestError::Abandoned {
            topic: exchange.topic().clone(),
        }),
    }
}

/// [`Bus::request_stream`](crate::Bus::request_stream) and its twins on a remote bus.
pub(crate) fn request_stream_remote(
    bus: &Arc<RemoteBus>,
    topic: &str,
    payload: &[u8],
    patience: Option<Duration>,
) -> Result<ResponseStream, RequestError> {
    let topic = exact_topic(topic)?;
    let exchange = bus.request(topic, payload, true, patience)?;
    Ok(ResponseStream::remote(exchange))
}

/// [`Bus::request_stream`](crate::Bus::request_stream) and its twins.
pub(crate) fn request_stream(
    bus: &Arc<BusInner>,
    pool: &Arc<InboxPool>,
    topic: &str,
    payload: &[u8],
    patience: Option<Duration>,
) -> Result<ResponseStream, RequestError> {
    let topic = exact_topic(topic)?;
    let exchange = pooled(bus, pool, &topic)?;
    stream(bus, exchange, topic, &mut Payload::Copy(payload), patience)
}

/// Sends a request on `exchange` and returns the stream of its answers.
fn stream(
    bus: &Arc<BusInner>,
    mut exchange: Exchange,
    topic: Topic,
    payload: &mut Payload<'_>,
    patience: Option<Duration>,
) -> Result<ResponseStream, RequestError> {
    let deadline = deadline_after(patience);
    let (correlation, link, kind, sample) = first_answer(
        bus,
        exchange.inbox.as_mut().expect("present until dropped"),
        &mut exchange.finished,
        &topic,
        payload,
        deadline,
    )?;
    Ok(ResponseStream {
        inner: StreamFlavor::Local(LocalStream {
            exchange,
            topic,
            correlation,
            link,
            patience,
            first: Some((kind, sample)),
            done: false,
        }),
    })
}

/// Requests to one topic, from an inbox of its own: the zero-copy way to ask
/// ([`Requester::request_with`] writes the request in place), and the one to choose how to wait
/// for answers. From [`Bus::requester`](crate::Bus::requester).
///
/// ```
/// use shmbus::Bus;
///
/// let bus = Bus::embedded()?;
/// let server = bus.serve_with("math/double", |req| {
///     let n = u32::from_le_bytes(req.payload().try_into().unwrap_or_default());
///     (2 * n).to_le_bytes()
/// })?;
/// let mut requester = bus.requester("math/double")?;
/// let answer = requester.request_with(4, |buf| {
///     buf.copy_from_slice(&21u32.to_le_bytes());
///     4
/// })?;
/// assert_eq!(answer.payload(), 42u32.to_le_bytes());
/// # drop(server);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Requester {
    topic: Topic,
    wait: WaitStrategy,
    way: Asking,
}

/// How a requester asks.
#[expect(
    clippy::large_enum_variant,
    reason = "boxing the hot, local variant would cost every request"
)]
enum Asking {
    /// Through an inbox of its own on the local bus.
    Local {
        bus: Arc<BusInner>,
        inbox: Option<Inbox>,
        /// Where a finished stream leaves the inbox it took.
        after_stream: Arc<InboxPool>,
    },
    /// Through the gateway.
    Remote(Arc<RemoteInner>),
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("topic", &self.topic)
            .finish()
    }
}

impl Requester {
    pub(crate) fn new(bus: Arc<BusInner>, topic: &str) -> Result<Requester, RequestError> {
        let topic = exact_topic(topic)?;
        let inbox = Inbox::open(&bus, &topic, WaitStrategy::default())?;
        Ok(Requester {
            topic,
            wait: WaitStrategy::default(),
            way: Asking::Local {
                bus,
                inbox: Some(inbox),
                after_stream: Arc::default(),
            },
        })
    }

    /// A requester of a remote bus: each request goes to the gateway, which asks.
    pub(crate) fn remote(bus: Arc<RemoteInner>, topic: &str) -> Result<Requester, RequestError> {
        Ok(Requester {
            topic: exact_topic(topic)?,
            wait: WaitStrategy::default(),
            way: Asking::Remote(bus),
        })
    }

    /// The topic requests go to.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// How to wait for answers (default: spin, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        self.wait = wait;
        if let Asking::Local {
            inbox: Some(inbox), ..
        } = &mut self.way
        {
            inbox.reader.set_wait_strategy(wait);
        }
    }

    /// Sends `payload` and waits for the answer as long as it takes.
    pub fn request(&mut self, payload: &[u8]) -> Result<Response, RequestError> {
        self.exchange(&mut Payload::Copy(payload), None)
    }

    /// Sends `payload` and waits for the answer at most `timeout`.
    pub fn request_timeout(
        &mut self,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Response, RequestError> {
        self.exchange(&mut Payload::Copy(payload), Some(timeout))
    }

    /// Sends `payload` and waits for the answer until `deadline`.
    pub fn request_deadline(
        &mut self,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<Response, RequestError> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.exchange(&mut Payload::Copy(payload), Some(left))
    }

    /// Writes the request in place: `fill` gets `len` bytes of the request ring and returns how
    /// many it used. Then waits for the answer as long as it takes.
    pub fn request_with(
        &mut self,
        len: usize,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<Response, RequestError> {
        let mut fill = |buf: &mut [u8]| Ok(fill(buf));
        self.exchange(&mut Payload::Fill(len, &mut fill), None)
    }

    /// Sends `value` as a typed request, serialized with rkyv straight into the request ring,
    /// and waits for the answer (at most `timeout`, if given), validated as an archive of `R`.
    ///
    /// ```
    /// use shmbus::Bus;
    ///
    /// #[derive(rkyv::Archive, rkyv::Serialize)]
    /// struct Add { a: i64, b: i64 }
    ///
    /// let bus = Bus::embedded()?;
    /// let mut server = bus.serve("math/add")?;
    /// let worker = std::thread::spawn(move || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    ///     let request = server.recv()?;
    ///     let sum = {
    ///         let add = request.payload_typed::<Add>()?; // validated, read in place
    ///         add.a.to_native() + add.b.to_native()
    ///     };
    ///     request.respond_typed(&sum)?; // serialized straight into the requester's inbox
    ///     Ok(())
    /// });
    /// let mut requester = bus.requester("math/add")?;
    /// let answer = requester.request_typed::<Add, i64>(&Add { a: 40, b: 2 }, None)?;
    /// assert_eq!(*answer, 42);
    /// worker.join().unwrap().unwrap();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn request_typed<Q, R>(
        &mut self,
        value: &Q,
        timeout: Option<Duration>,
    ) -> Result<TypedResponse<R>, RequestError>
    where
        Q: rkyv::Archive + for<'b, 'a> rkyv::Serialize<RingSerializer<'b, 'a>>,
        R: rkyv::Archive,
        R::Archived: rkyv::Portable
            + for<'a> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>,
            >,
    {
        let max = self.max_payload() - EXCHANGE_HEADER_LEN;
        let mut fill = |buf: &mut [u8]| serialize_tagged(value, buf);
        let response = self.exchange(&mut Payload::Fill(max, &mut fill), timeout)?;
        TypedResponse::check(response, &self.topic)
    }

    /// Sends `payload` and returns the stream of answers; each wait for the next one lasts at
    /// most `timeout` (`None`: as long as it takes).
    pub fn request_stream(
        &mut self,
        payload: &[u8],
        timeout: Option<Duration>,
    ) -> Result<ResponseStream, RequestError> {
        let Requester { topic, wait, way } = self;
        let (bus, inbox, after_stream) = match way {
            Asking::Local {
                bus,
                inbox,
                after_stream,
            } => (bus, inbox, after_stream),
            Asking::Remote(remote) => {
                let exchange = remote.bus.request(topic.clone(), payload, true, timeout)?;
                return Ok(ResponseStream::remote(exchange));
            }
        };
        // A finished stream leaves the inbox where the next exchange finds it.
        let exchange = Exchange {
            inbox: Some(take_inbox(bus, inbox, after_stream, topic, *wait)?),
            home: Arc::clone(after_stream),
            finished: false,
        };
        let topic = topic.clone();
        stream(bus, exchange, topic, &mut Payload::Copy(payload), timeout)
    }

    /// The largest request.
    fn max_payload(&self) -> usize {
        match &self.way {
            Asking::Local { bus, .. } => bus.max_payload() as usize,
            Asking::Remote(remote) => remote.bus.max_payload() as usize,
        }
    }

    fn exchange(
        &mut self,
        payload: &mut Payload<'_>,
        patience: Option<Duration>,
    ) -> Result<Response, RequestError> {
        let Requester { topic, wait, way } = self;
        let (bus, inbox, after_stream) = match way {
            Asking::Local {
                bus,
                inbox,
                after_stream,
            } => (bus, inbox, after_stream),
            Asking::Remote(remote) => {
                // A request written in place is written here, then sent: the gateway copies it
                // into the request ring.
                let mut filled = Vec::new();
                let bytes = match payload {
                    Payload::Copy(bytes) => *bytes,
                    Payload::Fill(len, fill) => {
                        filled.resize(*len, 0);
                        let used = fill(&mut filled).map_err(|detail| RequestError::Serialize {
                            topic: topic.clone(),
                            detail,
                        })?;
                        &filled[..used.min(*len)]
                    }
                };
                return ask_remote(&remote.bus, topic.clone(), bytes, patience);
            }
        };
        // Used in place; dropped (so closed) if the exchange ends unfinished, or if its broker
        // is gone.
        if inbox.as_ref().is_none_or(|inbox| inbox.reader.is_stale()) {
            *inbox = Some(take_inbox(bus, inbox, after_stream, topic, *wait)?);
        }
        let mut finished = false;
        let answer = first_answer(
            bus,
            inbox.as_mut().expect("made above"),
            &mut finished,
            topic,
            payload,
            deadline_after(patience),
        )
        .and_then(|(_, _, kind, sample)| single(&mut finished, topic, kind, sample));
        if !finished {
            *inbox = None;
        }
        answer
    }
}

/// A local requester's inbox for the next exchange: its own, or the one a finished stream gave
/// back, or a fresh one if the last exchange left it unfinished.
fn take_inbox(
    bus: &Arc<BusInner>,
    inbox: &mut Option<Inbox>,
    after_stream: &InboxPool,
    topic: &Topic,
    wait: WaitStrategy,
) -> Result<Inbox, RequestError> {
    // An inbox of a broker that is gone is dropped.
    let live = |inbox: &Inbox| !inbox.reader.is_stale();
    let taken = (inbox.take().filter(live)).or_else(|| after_stream.take().filter(live));
    match taken {
        Some(inbox) => Ok(inbox),
        None => Inbox::open(bus, topic, wait),
    }
}
