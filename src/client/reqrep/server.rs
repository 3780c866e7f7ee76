//! Serving: a [`Server`] reads the requests of its topic in place and answers each through a
//! [`Responder`] — now or later, from any thread, with one response or a stream.
//!
//! The server keeps one writer per requester inbox it answered, shared by its responders; a
//! writer whose inbox the broker retired (its requester went) is dropped the next time it is
//! used or a new one is made.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shmbus_shm::{Deadline, LoanError, ReaderOptions, WaitStrategy, Writer};
use tracing::debug;

use super::error::{RespondError, ServeError};
use super::remote::RemoteRequests;
use crate::client::bus::BusInner;
use crate::client::connection::Link;
use crate::client::error::{AttachError, CallError};
use crate::client::pubsub::{
    AttachedWriter, OwnedSample, Patience, RecvError, RecvTimeoutError, Relinking, RingSubscriber,
    Sample, TryRecvError, Wait,
};
use crate::client::remote::{RemoteBus, RemoteInner};
use crate::client::schema::Schema;
use crate::client::schema::serialize_tagged;
use crate::protocol::remote::AnswerKind;
use crate::protocol::reqrep::{
    EXCHANGE_HEADER_LEN, RequestHeader, Respond, ResponseHeader, ResponseKind, Serve,
};
use crate::protocol::{ErrorCode, RingId};
use crate::sync::lock;
use crate::topic::Topic;

/// Writes a frame's payload in place: returns the bytes used, or why it could not (then nothing
/// is sent).
type Fill<'f> = dyn FnMut(&mut [u8]) -> Result<usize, String> + 'f;

/// [`Fill`] that also reads the request's bytes.
type AnswerFill<'f> = dyn FnMut(&[u8], &mut [u8]) -> Result<usize, String> + 'f;

/// What a server and its responders share: where the answers go — into the requesters' inboxes
/// (the writers on them), or to the gateway.
pub(crate) struct Outbound {
    topic: Topic,
    way: Way,
}

enum Way {
    /// Into the inboxes (rings) of the bus.
    Rings(Rings),
    /// To the gateway, which answers on the client's behalf.
    Remote(Arc<RemoteBus>),
}

/// The writers into the requesters' inboxes a server answered.
struct Rings {
    bus: Arc<BusInner>,
    /// The link the server registered on: inbox ids are those of its broker.
    link: Arc<Link>,
    writers: Mutex<HashMap<RingId, Arc<Mutex<AttachedWriter>>>>,
}

impl Outbound {
    /// Nothing written yet to the inboxes of the broker of `link`.
    fn new(bus: Arc<BusInner>, link: Arc<Link>, topic: Topic) -> Outbound {
        let rings = Rings {
            bus,
            link,
            writers: Mutex::new(HashMap::new()),
        };
        Outbound {
            topic,
            way: Way::Rings(rings),
        }
    }

    /// Writes one response frame into `inbox` (or sends it to the gateway): a header of
    /// `kind`, then what `fill` writes into a buffer of `len` bytes (it returns how many it
    /// used). Waits while the inbox is full (its requester reads slowly; the broker evicts one
    /// that stops reading).
    fn send(
        &self,
        inbox: RingId,
        header: ResponseHeader,
        len: usize,
        fill: &mut Fill<'_>,
    ) -> Result<(), RespondError> {
        self.check_len(len)?;
        match &self.way {
            Way::Rings(rings) => {
                let shared = rings.writer(inbox)?;
                rings.deliver(&self.topic, &shared, inbox, header, len, fill)
            }
            Way::Remote(bus) => send_remote(bus, header, len, fill),
        }
    }

    /// The largest answer.
    fn max_payload(&self) -> usize {
        let max = match &self.way {
            Way::Rings(rings) => rings.bus.max_payload() as usize,
            Way::Remote(bus) => bus.max_payload() as usize,
        };
        max - EXCHANGE_HEADER_LEN
    }

    /// Refuses a response longer than the bus's rings carry.
    fn check_len(&self, len: usize) -> Result<(), RespondError> {
        let max = self.max_payload();
        if len > max {
            return Err(RespondError::TooLarge { len, max });
        }
        Ok(())
    }
}

/// Sends an answer to the gateway: `header.correlation` is the gateway's number for the request.
fn send_remote(
    bus: &RemoteBus,
    header: ResponseHeader,
    len: usize,
    fill: &mut Fill<'_>,
) -> Result<(), RespondError> {
    let mut buf = vec![0; len];
    let used = fill(&mut buf)
        .map_err(|detail| RespondError::Serialize { detail })?
        .min(len);
    let kind = match header.kind {
        ResponseKind::Single => Some(AnswerKind::Single),
        ResponseKind::Item => Some(AnswerKind::Item),
        ResponseKind::End => Some(AnswerKind::End),
        ResponseKind::Unanswered => None,
    };
    let request = u32::try_from(header.correlation).unwrap_or(u32::MAX);
    bus.respond(request, kind.map(|kind| (kind, &buf[..used])))
        .map_err(|e| RespondError::Inbox {
            detail: format!("cannot reach the gateway: {e:?}"),
        })
}

impl Rings {
    /// The writer on inbox `inbox`, made if needed. Writers on inboxes the broker retired are
    /// dropped whenever a new one is made, so they do not pile up.
    fn writer(&self, inbox: RingId) -> Result<Arc<Mutex<AttachedWriter>>, RespondError> {
        if let Some(w) = lock(&self.writers).get(&inbox) {
            return Ok(Arc::clone(w));
        }
        // Asked without holding the map, so other responders go on meanwhile.
        let respond = Respond { inbox };
        let (reply, fds) = self
            .bus
            .conn
            .call_on(&self.link, respond)
            .map_err(|e| match e {
                CallError::Refused(r) if r.code == ErrorCode::Unknown => {
                    RespondError::RequesterGone
                }
                CallError::Refused(r) => RespondError::Inbox {
                    detail: format!("the broker refused: {}", r.message),
                },
                CallError::Request(e) => RespondError::Broker(e),
            })?;
        let writer = AttachedWriter::attach(&self.bus, Arc::clone(&self.link), fds, &reply)
            .map_err(|detail| RespondError::Inbox { detail })?;
        let mut writers = lock(&self.writers);
        // An entry in use (its lock held) is not retired; the others are checked.
        writers.retain(|_, w| w.try_lock().map_or(true, |w| !w.ring.is_retired()));
        let w = writers
            .entry(inbox)
            .or_insert_with(|| Arc::new(Mutex::new(writer)));
        Ok(Arc::clone(w))
    }

    /// [`Outbound::send`] with the writer looked up already.
    fn deliver(
        &self,
        topic: &Topic,
        shared: &Mutex<AttachedWriter>,
        inbox: RingId,
        header: ResponseHeader,
        len: usize,
        fill: &mut Fill<'_>,
    ) -> Result<(), RespondError> {
        // The entry's lock is let go before the map's is taken (the map's comes first elsewhere).
        let written = write_frame(&mut lock(shared).writer, header, len, fill);
        if written == Err(RespondError::RequesterGone) {
            debug!(topic = %topic, inbox = %inbox, "the requester's inbox is closed");
            lock(&self.writers).remove(&inbox);
        }
        written
    }
}

/// Writes one response frame with `writer` (see [`Outbound::send`]).
fn write_frame(
    writer: &mut Writer,
    header: ResponseHeader,
    len: usize,
    fill: &mut Fill<'_>,
) -> Result<(), RespondError> {
    for retry in [false, true] {
        let mut loan = match writer.loan(EXCHANGE_HEADER_LEN + len, Deadline::Never) {
            Ok(loan) => loan,
            Err(LoanError::TooLarge { len, max }) => {
                return Err(RespondError::TooLarge {
                    len: len - EXCHANGE_HEADER_LEN,
                    max: max - EXCHANGE_HEADER_LEN,
                });
            }
            // Retired (or found corrupt): the requester is gone.
            Err(_) => return Err(RespondError::RequesterGone),
        };
        let buf = loan.as_mut_slice();
        buf[..EXCHANGE_HEADER_LEN].copy_from_slice(&header.encode());
        // On an error the loan drops uncommitted: a skipped frame nobody sees.
        let used = fill(&mut buf[EXCHANGE_HEADER_LEN..])
            .map_err(|detail| RespondError::Serialize { detail })?
            .min(len);
        match loan.commit_prefix(EXCHANGE_HEADER_LEN + used) {
            Ok(_) => return Ok(()),
            // Taken back after the unblock timeout (this process was stopped): send again.
            Err(_) if !retry => {}
            Err(e) => {
                return Err(RespondError::Inbox {
                    detail: e.to_string(),
                });
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// Where to answer one request: owned, `Send`, usable from any thread and at any time. Answer
/// with [`respond`](Responder::respond), [`respond_with`](Responder::respond_with) (in place) or
/// [`stream`](Responder::stream); one dropped without answering tells the requester
/// ([`RequestError::Abandoned`](super::RequestError::Abandoned)).
pub struct Responder {
    outbound: Arc<Outbound>,
    inbox: RingId,
    correlation: u64,
    answered: bool,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("topic", &self.outbound.topic)
            .field("inbox", &self.inbox)
            .field("correlation", &self.correlation)
            .finish()
    }
}

impl Responder {
    fn frame(
        &mut self,
        kind: ResponseKind,
        len: usize,
        fill: &mut Fill<'_>,
    ) -> Result<(), RespondError> {
        let header = ResponseHeader {
            correlation: self.correlation,
            kind,
        };
        self.outbound.send(self.inbox, header, len, fill)
    }

    /// Answers with `payload` (copied into the requester's inbox).
    pub fn respond(mut self, payload: &[u8]) -> Result<(), RespondError> {
        self.answered = true;
        self.frame(ResponseKind::Single, payload.len(), &mut copy(payload))
    }

    /// Answers in place: `fill` gets `len` bytes of the requester's inbox and returns how many
    /// it used.
    pub fn respond_with(
        mut self,
        len: usize,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<(), RespondError> {
        self.answered = true;
        self.frame(ResponseKind::Single, len, &mut |buf| Ok(fill(buf)))
    }

    /// Answers with a stream of responses, closed by [`ResponseSender::end`].
    pub fn stream(self) -> ResponseSender {
        ResponseSender { responder: self }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if !self.answered {
            self.answered = true;
            if let Err(e) = self.frame(ResponseKind::Unanswered, 0, &mut |_| Ok(0)) {
                debug!(topic = %self.outbound.topic, "could not tell a requester its request was dropped: {e}");
            }
        }
    }
}

/// A copy of `payload` into a buffer of its length, as a fill function.
fn copy(payload: &[u8]) -> impl FnMut(&mut [u8]) -> Result<usize, String> + '_ {
    move |buf: &mut [u8]| {
        buf[..payload.len()].copy_from_slice(payload);
        Ok(payload.len())
    }
}

/// A stream of responses to one request. Dropped without [`end`](ResponseSender::end), it tells
/// the requester the answer was abandoned.
#[derive(Debug)]
pub struct ResponseSender {
    responder: Responder,
}

impl ResponseSender {
    /// Sends one response of the stream (copied).
    pub fn send(&mut self, payload: &[u8]) -> Result<(), RespondError> {
        self.responder
            .frame(ResponseKind::Item, payload.len(), &mut copy(payload))
    }

    /// Sends one response of the stream, written in place by `fill` (see
    /// [`Responder::respond_with`]).
    pub fn send_with(
        &mut self,
        len: usize,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> Result<(), RespondError> {
        self.responder
            .frame(ResponseKind::Item, len, &mut |buf| Ok(fill(buf)))
    }

    /// Closes the stream: the requester's iteration ends.
    pub fn end(mut self) -> Result<(), RespondError> {
        self.responder.answered = true;
        self.responder.frame(ResponseKind::End, 0, &mut |_| Ok(0))
    }
}

/// The writer a server used last, kept so that answering the same requester again looks
/// nothing up.
type LastWriter = Option<(RingId, Arc<Mutex<AttachedWriter>>)>;

/// A request, read in place in the server's request ring (borrowed from the [`Server`]). Answer
/// it at once, or keep its [`Responder`] (and, if needed, [`detach`](Request::detach) it) to
/// answer later. Dropped unanswered, it tells the requester
/// ([`RequestError::Abandoned`](super::RequestError::Abandoned)).
pub struct Request<'a> {
    /// `Some` until detached.
    sample: Option<Sample<'a>>,
    outbound: &'a Arc<Outbound>,
    last: &'a mut LastWriter,
    inbox: RingId,
    correlation: u64,
    answered: bool,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("topic", &self.topic())
            .field("len", &self.payload().len())
            .finish()
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        if !self.answered {
            let header = ResponseHeader {
                correlation: self.correlation,
                kind: ResponseKind::Unanswered,
            };
            if let Err(e) = self.outbound.send(self.inbox, header, 0, &mut |_| Ok(0)) {
                debug!(topic = %self.outbound.topic, "could not tell a requester its request was dropped: {e}");
            }
        }
    }
}

impl<'a> Request<'a> {
    /// The topic served.
    pub fn topic(&self) -> &str {
        self.outbound.topic.as_str()
    }

    /// The request's bytes, in shared memory.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.sample {
            Some(sample) => &sample.payload()[EXCHANGE_HEADER_LEN..],
            None => &[],
        }
    }

    /// The request as an archive of `T`, read in place: its schema tag checked and the archive
    /// validated (at each call).
    pub fn payload_typed<T>(&self) -> Result<&T::Archived, RecvError>
    where
        T: rkyv::Archive,
        T::Archived: rkyv::Portable
            + for<'v> rkyv::bytecheck::CheckBytes<
                rkyv::api::high::HighValidator<'v, rkyv::rancor::BoxedError>,
            >,
    {
        let topic = || self.outbound.topic.clone();
        let schema = Schema::of::<T>();
        let archive = schema
            .strip(self.payload())
            .map_err(|found| RecvError::TypeMismatch {
                topic: topic(),
                expected: schema,
                found: crate::client::schema::found(found),
            })?;
        rkyv::access::<T::Archived, rkyv::rancor::BoxedError>(archive).map_err(|e| {
            RecvError::Invalid {
                topic: topic(),
                sequence: self.sample.as_ref().map_or(0, Sample::sequence),
                detail: e.to_string(),
            }
        })
    }

    /// Answers with `payload` (copied into the requester's inbox).
    pub fn respond(self, payload: &[u8]) -> Result<(), RespondError> {
        let mut copy = copy(payload);
        self.answer(payload.len(), &mut |_, buf| copy(buf))
    }

    /// Answers in place, reading the request in place: `fill` gets the request's bytes and `len`
    /// bytes of the requester's inbox, and returns how many of those it used. Zero copies.
    pub fn respond_with(
        self,
        len: usize,
        mut fill: impl FnMut(&[u8], &mut [u8]) -> usize,
    ) -> Result<(), RespondError> {
        self.answer(len, &mut |request, buf| Ok(fill(request, buf)))
    }

    /// Answers with `value`, serialized with rkyv straight into the requester's inbox.
    pub fn respond_typed<R>(self, value: &R) -> Result<(), RespondError>
    where
        R: rkyv::Archive + for<'b, 'c> rkyv::Serialize<crate::RingSerializer<'b, 'c>>,
    {
        let max = self.outbound.max_payload();
        self.answer(max, &mut |_, buf| serialize_tagged(value, buf))
    }

    /// Writes the answer: up to `len` bytes by `fill`, given the request's bytes.
    fn answer(mut self, len: usize, fill: &mut AnswerFill<'_>) -> Result<(), RespondError> {
        self.answered = true;
        let outbound: &Outbound = self.outbound;
        outbound.check_len(len)?;
        let inbox = self.inbox;
        let header = ResponseHeader {
            correlation: self.correlation,
            kind: ResponseKind::Single,
        };
        let Way::Rings(rings) = &outbound.way else {
            let request = self.payload();
            return outbound.send(inbox, header, len, &mut |buf| fill(request, buf));
        };
        if self.last.as_ref().map(|(id, _)| *id) != Some(inbox) {
            *self.last = Some((inbox, rings.writer(inbox)?));
        }
        let request = self.payload();
        let (_, shared) = self.last.as_ref().expect("filled above");
        let written = rings.deliver(&outbound.topic, shared, inbox, header, len, &mut |buf| {
            fill(request, buf)
        });
        if written.is_err() {
            *self.last = None;
        }
        written
    }

    /// Answers with a stream of responses.
    pub fn stream(self) -> ResponseSender {
        self.into_responder().stream()
    }

    /// Keeps only where to answer: the request's frame is released.
    pub fn into_responder(mut self) -> Responder {
        self.answered = true;
        Responder {
            outbound: Arc::clone(self.outbound),
            inbox: self.inbox,
            correlation: self.correlation,
            answered: false,
        }
    }

    /// Keeps the request, in place, beyond the server's next receive (see
    /// [`Sample::detach`](crate::Sample::detach)). A server holds at most 16 requests in place
    /// at once (its receive then fails with `RecvError::HeldLimit` until one is answered); to keep
    /// more open, copy what is needed and keep only the [`Responder`]
    /// ([`Request::into_responder`]).
    pub fn detach(mut self) -> OwnedRequest {
        let sample = self.sample.take().expect("present until detached");
        OwnedRequest {
            sample: sample.detach(),
            responder: self.into_responder(),
        }
    }
}

/// A request that borrows nothing (see [`Request::detach`]): send it to another thread, answer
/// it in any order.
pub struct OwnedRequest {
    sample: OwnedSample,
    responder: Responder,
}

impl std::fmt::Debug for OwnedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedRequest")
            .field("len", &self.payload().len())
            .finish()
    }
}

impl OwnedRequest {
    /// The request's bytes.
    pub fn payload(&self) -> &[u8] {
        &self.sample.payload()[EXCHANGE_HEADER_LEN..]
    }

    /// Answers with `payload`; the request's frame is released.
    pub fn respond(self, payload: &[u8]) -> Result<(), RespondError> {
        self.responder.respond(payload)
    }

    /// Answers in place, reading the request in place (see [`Request::respond_with`]).
    pub fn respond_with(
        self,
        len: usize,
        mut fill: impl FnMut(&[u8], &mut [u8]) -> usize,
    ) -> Result<(), RespondError> {
        let OwnedRequest {
            sample,
            mut responder,
        } = self;
        let request = &sample.payload()[EXCHANGE_HEADER_LEN..];
        responder.answered = true;
        responder.frame(ResponseKind::Single, len, &mut |buf| Ok(fill(request, buf)))
    }

    /// Answers with a stream of responses.
    pub fn stream(self) -> ResponseSender {
        self.responder.stream()
    }

    /// Keeps only where to answer.
    pub fn into_responder(self) -> Responder {
        self.responder
    }
}

/// Serves one topic, exclusively: receives its requests in place. Serving ends when it drops
/// (or its process dies); requests left unanswered then fail with
/// [`RequestError::ServerGone`](super::RequestError::ServerGone), and another may serve the
/// topic. From [`Bus::serve`](crate::Bus::serve).
pub struct Server {
    source: Source,
    outbound: Arc<Outbound>,
    last: LastWriter,
}

/// Where a server's requests come from.
enum Source {
    /// Its request ring.
    Rings(RingSubscriber),
    /// Its gateway.
    Remote(RemoteRequests),
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("topic", &self.outbound.topic)
            .finish()
    }
}

/// `topic` as a topic a server may serve: valid, without wildcards.
fn exact(topic: &str) -> Result<Topic, ServeError> {
    let parsed = Topic::new(topic).map_err(AttachError::from)?;
    if parsed.is_wildcard() {
        let e = crate::topic::TopicError::Wildcard {
            topic: topic.to_string(),
        };
        return Err(ServeError::Attach(AttachError::from(e)));
    }
    Ok(parsed)
}

impl Server {
    /// Serves `topic` on a local bus: its request ring.
    pub(crate) fn new(bus: Arc<BusInner>, topic: &str) -> Result<Server, ServeError> {
        let topic_ref = exact(topic)?;
        let options = ReaderOptions::default();
        let wait = WaitStrategy::default();
        let mut reader = RingSubscriber::open(Arc::clone(&bus), options, 0, wait, topic)?;
        let name = topic.to_string();
        reader
            .attach_with(
                move |doorbell| Serve {
                    topic: name.clone(),
                    doorbell,
                },
                |r| r.subscription,
            )
            .map_err(|e| match e {
                CallError::Refused(r) if r.code == ErrorCode::Taken => ServeError::AlreadyServed {
                    topic: topic.to_string(),
                    detail: r.message,
                },
                e => ServeError::Attach(AttachError::call(topic, e)),
            })?;
        // Served again at a broker that is back; the requests of the lost one cannot be
        // answered (the inboxes were its).
        reader.relink_with(Relinking::default());
        let link = Arc::clone(reader.link());
        Ok(Server {
            source: Source::Rings(reader),
            outbound: Arc::new(Outbound::new(bus, link, topic_ref)),
            last: None,
        })
    }

    /// Serves `topic` through the gateway of a remote bus.
    pub(crate) fn remote(bus: Arc<RemoteInner>, topic: &str) -> Result<Server, ServeError> {
        let topic = exact(topic)?;
        let requests = RemoteRequests::open(bus, &topic)?;
        let outbound = Outbound {
            way: Way::Remote(Arc::clone(&requests.bus().bus)),
            topic,
        };
        Ok(Server {
            source: Source::Remote(requests),
            outbound: Arc::new(outbound),
            last: None,
        })
    }

    /// The topic served.
    pub fn topic(&self) -> &str {
        self.outbound.topic.as_str()
    }

    /// How to wait for requests (default: spin, then park).
    pub fn set_wait_strategy(&mut self, wait: WaitStrategy) {
        match &mut self.source {
            Source::Rings(reader) => reader.set_wait_strategy(wait),
            Source::Remote(requests) => requests.set_wait_strategy(wait),
        }
    }

    /// The next request, waiting as long as it takes.
    pub fn recv(&mut self) -> Result<Request<'_>, RecvError> {
        match self.receive(Patience::Until(Deadline::Never), &|| false) {
            Ok(r) => Ok(r),
            Err(Wait::Failed(e)) => Err(e),
            Err(_) => {
                unreachable!("a wait without a deadline ends only with a request or an error")
            }
        }
    }

    /// The next request if one is there.
    pub fn try_recv(&mut self) -> Result<Request<'_>, TryRecvError> {
        self.receive(Patience::Now, &|| false).map_err(|e| match e {
            Wait::Failed(e) => TryRecvError::Failed(e),
            _ => TryRecvError::Empty,
        })
    }

    /// The next request, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Request<'_>, RecvTimeoutError> {
        self.receive_until(Deadline::After(timeout))
    }

    /// The next request, waiting until `deadline`.
    pub fn recv_deadline(&mut self, deadline: Instant) -> Result<Request<'_>, RecvTimeoutError> {
        self.receive_until(Deadline::At(deadline))
    }

    fn receive_until(&mut self, deadline: Deadline) -> Result<Request<'_>, RecvTimeoutError> {
        self.receive(Patience::Until(deadline), &|| false)
            .map_err(|e| match e {
                Wait::Failed(e) => RecvTimeoutError::Failed(e),
                _ => RecvTimeoutError::Timeout,
            })
    }

    /// The next request, or `Wait::Stopped` once `stop` says so (a dispatcher's guard dropped).
    pub(crate) fn receive(
        &mut self,
        patience: Patience,
        stop: &dyn Fn() -> bool,
    ) -> Result<Request<'_>, Wait> {
        let Server {
            source,
            outbound,
            last,
        } = self;
        let reader = match source {
            Source::Rings(reader) => reader,
            Source::Remote(requests) => {
                let message = requests.next(patience, stop)?;
                return Ok(Request {
                    sample: Some(Sample::remote(message)),
                    outbound,
                    last,
                    inbox: RingId::REMOTE,
                    // The gateway's number for the request, which its answers name.
                    correlation: message.sequence,
                    answered: false,
                });
            }
        };
        let (known, bus) = match &outbound.way {
            Way::Rings(rings) => (Some(&*rings.link), Some(Arc::clone(&rings.bus))),
            Way::Remote(_) => (None, None),
        };
        let (sample, new_link) = reader.next_noting_link(patience, stop, known)?;
        if let (Some(link), Some(bus)) = (new_link, bus) {
            // Registered again at a new broker: its inboxes, its writers.
            *outbound = Arc::new(Outbound::new(bus, link, outbound.topic.clone()));
            *last = None;
        }
        let Some((header, _)) = RequestHeader::decode(sample.payload()) else {
            // Written by a faulty requester: dropped, like any corrupt frame.
            return Err(Wait::Failed(RecvError::Corrupt {
                topic: outbound.topic.clone(),
                detail: "a request too short to hold its header".into(),
            }));
        };
        Ok(Request {
            sample: Some(sample),
            outbound,
            last,
            inbox: header.inbox,
            correlation: header.correlation,
            answered: false,
        })
    }

    /// Wakes a receive waiting in [`Server::receive`] so it looks at its `stop` again.
    pub(crate) fn waker(&self) -> crate::client::pubsub::Waker {
        match &self.source {
            Source::Rings(reader) => reader.waker(),
            Source::Remote(requests) => requests.waker(),
        }
    }
}
