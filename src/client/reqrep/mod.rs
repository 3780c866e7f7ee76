//! Request/response: a [`Server`] serves one topic exclusively; requesters ask it with
//! [`Bus::request`](crate::Bus::request), [`Bus::request_stream`](crate::Bus::request_stream) or a
//! [`Requester`], and get a [`Response`] (or a [`ResponseStream`]) read in place.
//!
//! Requests and responses travel through shared memory, like messages: the server reads its
//! topic's request ring, each requester an inbox of its own, and after the first exchange
//! between two parties neither asks the broker anything (see `docs/PROTOCOL.md`, "Request/
//! response"). The broker only sets the rings up and tells requesters, through shared memory,
//! when a server goes.
//!
//! ```
//! use shmbus::Bus;
//!
//! let bus = Bus::embedded()?;
//! let mut server = bus.serve("time/now")?;
//! let worker = std::thread::spawn(move || -> Result<(), shmbus::RespondError> {
//!     let request = server.recv().expect("a request");
//!     assert_eq!(request.payload(), b"utc");
//!     request.respond(b"12:00")
//! });
//! let answer = bus.request("time/now", b"utc")?;
//! assert_eq!(answer.payload(), b"12:00");
//! worker.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod callbacks;
mod error;
mod remote;
mod requester;
mod server;

pub use callbacks::Dispatcher;
pub(crate) use callbacks::{on, serve_with};
pub use error::{RequestError, RespondError, ServeError};
pub(crate) use requester::{
    InboxPool, request, request_remote, request_stream, request_stream_remote,
};
pub use requester::{Requester, Response, ResponseStream, TypedResponse};
pub use server::{OwnedRequest, Request, Responder, ResponseSender, Server};
