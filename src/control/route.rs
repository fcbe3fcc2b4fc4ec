//! Routing control requests to the services that answer them: a table from `msg_type` to a
//! route, instead of a `match` in the control agent.
//!
//! A route is either **local** (answered at once, on the control lane, by a [`LocalRoute`]:
//! status, config) or **forwarded**: the request goes through a [link](crate::runtime::link)
//! to a service agent, possibly on another lane, which answers later through its
//! [`ControlPort`], keyed by connection and `msg_id`. A forwarded route may also **push**:
//! once a client subscribed (its request's `msg_id` names the subscription), the service sends
//! it messages whenever it likes, each a response frame carrying that `msg_id`, until the
//! connection closes (the service is told, [`ToService::Closed`]).
//!
//! ```text
//! client --request--> control agent --ToService::Request--> service agent (any lane)
//!        <--response/error/push-- control agent <--FromService-- service agent
//! ```
//!
//! A forwarded request whose link is full gets the busy error at once (nothing queues
//! without bound); one whose service has stopped gets `service unavailable`.

use std::fmt;

use std::collections::VecDeque;

use crate::rings::spsc::PushError;
use crate::runtime::{LinkRx, LinkTx};

/// A control connection as a service sees it: opaque, echoed back in replies. A reply for a
/// connection that closed meanwhile is dropped by the control agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef(pub(crate) u64);

/// What the control agent sends a service.
#[derive(Debug)]
pub enum ToService {
    /// A request for one of the service's message types.
    Request(Request),
    /// The connection closed: forget its subscriptions and pending requests.
    Closed(ConnRef),
}

/// A forwarded request.
#[derive(Debug)]
pub struct Request {
    /// Where the reply goes.
    pub conn: ConnRef,
    /// The request's `msg_id`: echoed in the reply, and the subscription's id for pushes.
    pub msg_id: u64,
    /// The request's `msg_type`.
    pub msg_type: u16,
    /// The protobuf body, undecoded.
    pub body: Vec<u8>,
}

/// What a service sends back.
#[derive(Debug)]
pub struct FromService {
    /// The connection.
    pub conn: ConnRef,
    /// The request's `msg_id` (or the subscription's).
    pub msg_id: u64,
    /// The `msg_type`.
    pub msg_type: u16,
    /// Response, error or push.
    pub kind: ReplyKind,
    /// The protobuf body (for an error: the text).
    pub body: Vec<u8>,
}

/// The kind of a [`FromService`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    /// The answer to the request.
    Response,
    /// An error reply with this code (the body is the text).
    Error(u16),
    /// An unsolicited message for a subscription.
    Push,
}

/// Why a local route refused a request.
#[derive(Debug)]
pub enum RouteError {
    /// The body is not the request's protobuf message.
    BadBody(prost::DecodeError),
    /// Any other error: a code and a text, sent as an error reply.
    Other {
        /// The error code.
        code: u16,
        /// The text.
        text: String,
    },
}

/// A request answered on the control lane, at once.
pub trait LocalRoute: Send {
    /// Writes the response body (protobuf) for `body` into `reply` (empty on entry).
    fn answer(&mut self, body: &[u8], reply: &mut Vec<u8>) -> Result<(), RouteError>;
}

/// Decodes `body` as `Q`, answers it with `f`, and encodes the answer into `reply`: the body of
/// most local routes.
pub fn answer<Q, R>(
    body: &[u8],
    reply: &mut Vec<u8>,
    f: impl FnOnce(Q) -> R,
) -> Result<(), RouteError>
where
    Q: prost::Message + Default,
    R: prost::Message,
{
    let request = Q::decode(body).map_err(RouteError::BadBody)?;
    crate::control::session::encode_body(&f(request), reply);
    Ok(())
}

/// A route's counters and name.
pub(crate) struct RouteEntry {
    pub(crate) msg_type: u16,
    pub(crate) name: &'static str,
    pub(crate) route: Route,
}

pub(crate) enum Route {
    Local(Box<dyn LocalRoute>),
    Forward { requests: LinkTx<ToService>, replies: usize },
}

/// The routes of the control agent, by `msg_type` (sorted: a binary search per request), and
/// the links replies come back on.
#[derive(Default)]
pub struct Routes {
    pub(crate) entries: Vec<RouteEntry>,
    pub(crate) replies: Vec<LinkRx<FromService>>,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<(u16, &str)> = self.entries.iter().map(|e| (e.msg_type, e.name)).collect();
        f.debug_struct("Routes").field("routes", &names).finish()
    }
}

/// A route that would take a `msg_type` already taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("control msg_type {msg_type} is routed twice: to '{first}' and to '{second}'")]
pub struct DuplicateRoute {
    /// The `msg_type`.
    pub msg_type: u16,
    /// The route that has it.
    pub first: &'static str,
    /// The route refused.
    pub second: &'static str,
}

impl Routes {
    /// No routes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a local route.
    pub fn local(
        &mut self,
        msg_type: u16,
        name: &'static str,
        route: Box<dyn LocalRoute>,
    ) -> Result<(), DuplicateRoute> {
        self.insert(RouteEntry { msg_type, name, route: Route::Local(route) })
    }

    /// Adds a forwarded route: requests go out on `requests`, replies come back on `replies`.
    pub fn forward(
        &mut self,
        msg_type: u16,
        name: &'static str,
        requests: LinkTx<ToService>,
        replies: LinkRx<FromService>,
    ) -> Result<(), DuplicateRoute> {
        let index = self.replies.len();
        self.insert(RouteEntry {
            msg_type,
            name,
            route: Route::Forward { requests, replies: index },
        })?;
        self.replies.push(replies);
        Ok(())
    }

    /// Adds a link replies come back on, for routes added with [`forward_to`](Self::forward_to);
    /// returns its index.
    pub(crate) fn add_replies(&mut self, replies: LinkRx<FromService>) -> usize {
        self.replies.push(replies);
        self.replies.len() - 1
    }

    /// A forwarded route whose replies come on the existing link `replies` (merging tables).
    pub(crate) fn forward_to(
        &mut self,
        msg_type: u16,
        name: &'static str,
        requests: LinkTx<ToService>,
        replies: usize,
    ) -> Result<(), DuplicateRoute> {
        self.insert(RouteEntry { msg_type, name, route: Route::Forward { requests, replies } })
    }

    /// The `msg_type`s routed, with their names, in order.
    pub fn names(&self) -> Vec<(u16, &'static str)> {
        self.entries.iter().map(|e| (e.msg_type, e.name)).collect()
    }

    fn insert(&mut self, entry: RouteEntry) -> Result<(), DuplicateRoute> {
        match self.entries.binary_search_by_key(&entry.msg_type, |e| e.msg_type) {
            Ok(i) => Err(DuplicateRoute {
                msg_type: entry.msg_type,
                first: self.entries[i].name,
                second: entry.name,
            }),
            Err(i) => {
                self.entries.insert(i, entry);
                Ok(())
            }
        }
    }

    pub(crate) fn find(&mut self, msg_type: u16) -> Option<(usize, &mut RouteEntry)> {
        let i = self.entries.binary_search_by_key(&msg_type, |e| e.msg_type).ok()?;
        Some((i, &mut self.entries[i]))
    }
}

/// A service agent's end of its forwarded routes: requests in, replies and pushes out.
#[derive(Debug)]
pub struct ControlPort {
    /// One link per `msg_type` served (one for most ports); polled round-robin.
    requests: Vec<LinkRx<ToService>>,
    next: usize,
    replies: LinkTx<FromService>,
    /// Answers (responses and errors) a full link refused, oldest first, sent before anything
    /// else: every request gets its answer (the control agent waits for it). At most
    /// [`MAX_UNSENT_ANSWERS`].
    unsent: VecDeque<FromService>,
    /// Pushes refused by a full link, or while answers wait (the control agent is behind),
    /// and answers past the bound: counted, dropped.
    dropped: u64,
}

/// Answers a [`ControlPort`] keeps while its link back is full: as many as the control agent
/// keeps requests pending per route, so a service that answers each request once never loses
/// an answer.
pub const MAX_UNSENT_ANSWERS: usize = crate::daemon::MAX_PENDING_PER_ROUTE;

impl ControlPort {
    /// The port over the two links of a forwarded route.
    pub fn new(requests: LinkRx<ToService>, replies: LinkTx<FromService>) -> Self {
        Self::serving(vec![requests], replies)
    }

    /// The port of several forwarded routes that share one link back: every answer and push
    /// of the service goes back in the order it made them, whichever `msg_type` they answer
    /// (the tensor pool's announce before the attach response it causes).
    pub fn serving(requests: Vec<LinkRx<ToService>>, replies: LinkTx<FromService>) -> Self {
        Self { requests, next: 0, replies, unsent: VecDeque::new(), dropped: 0 }
    }

    /// The next request or close notice, if any (call in `do_work`); first sends the answers
    /// a full link refused earlier. Several request links are taken from in turn.
    pub fn poll(&mut self) -> Option<ToService> {
        self.flush();
        let n = self.requests.len();
        for i in 0..n {
            let at = (self.next + i) % n;
            if let Ok(message) = self.requests[at].pop() {
                self.next = (at + 1) % n;
                return Some(message);
            }
        }
        None
    }

    /// Answers waiting for room in the link back.
    pub fn unsent(&self) -> usize {
        self.unsent.len()
    }

    fn flush(&mut self) {
        while let Some(reply) = self.unsent.pop_front() {
            if let Err(PushError::Full(reply)) = self.replies.push(reply) {
                self.unsent.push_front(reply);
                return;
            }
        }
    }

    /// Answers `request` with `msg`.
    pub fn respond(&mut self, request: &Request, msg: &impl prost::Message) {
        self.send(
            request.conn,
            request.msg_id,
            request.msg_type,
            ReplyKind::Response,
            msg.encode_to_vec(),
        );
    }

    /// Answers `request` with an error reply.
    pub fn error(&mut self, request: &Request, code: u16, text: &str) {
        let kind = ReplyKind::Error(code);
        self.send(request.conn, request.msg_id, request.msg_type, kind, text.as_bytes().to_vec());
    }

    /// Pushes `msg` to the subscription `msg_id` of `conn`; false if the reply link is full
    /// (the push is dropped and counted: a subscriber that cannot keep up loses pushes, it
    /// does not make the service buffer).
    pub fn push(
        &mut self,
        conn: ConnRef,
        msg_id: u64,
        msg_type: u16,
        msg: &impl prost::Message,
    ) -> bool {
        self.send(conn, msg_id, msg_type, ReplyKind::Push, msg.encode_to_vec())
    }

    /// Replies dropped because the link back to the control agent was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn send(
        &mut self,
        conn: ConnRef,
        msg_id: u64,
        msg_type: u16,
        kind: ReplyKind,
        body: Vec<u8>,
    ) -> bool {
        let reply = FromService { conn, msg_id, msg_type, kind, body };
        self.flush();
        let answer = kind != ReplyKind::Push;
        if !self.unsent.is_empty() {
            // Behind answers that wait: an answer queues after them, a push is dropped (it
            // must not overtake the answer to its subscription).
            if answer && self.unsent.len() < MAX_UNSENT_ANSWERS {
                self.unsent.push_back(reply);
                return true;
            }
            self.dropped += 1;
            return false;
        }
        match self.replies.push(reply) {
            Ok(()) => true,
            Err(PushError::Full(reply)) if answer => {
                self.unsent.push_back(reply);
                true
            }
            Err(_) => {
                self.dropped += 1;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::proto::Pong;
    use crate::runtime::{link, LaneWaker};

    fn request(msg_id: u64) -> Request {
        Request { conn: ConnRef(1), msg_id, msg_type: 20, body: Vec::new() }
    }

    /// Found by the review of issue 7: an answer refused by a full link back was dropped, and
    /// its request then waited for the client's timeout (the control agent keeps it pending).
    /// Answers wait in the port and go, in order, as the link drains; pushes never overtake
    /// them.
    #[test]
    fn answers_wait_for_a_full_link_and_keep_their_order() {
        let waker = LaneWaker::new().unwrap();
        let (_to_service, requests) = link::<ToService>(2, &waker);
        let (replies, mut from_service) = link::<FromService>(2, &waker);
        let mut port = ControlPort::new(requests, replies);
        for id in 1..=5 {
            port.respond(&request(id), &Pong::default());
        }
        assert_eq!(port.unsent(), 3, "two fit the link, three wait");
        assert!(!port.push(ConnRef(1), 1, 20, &Pong::default()), "a push must not overtake");
        assert_eq!(port.dropped(), 1);
        let mut got = Vec::new();
        while got.len() < 5 {
            while let Ok(reply) = from_service.pop() {
                assert_ne!(reply.kind, ReplyKind::Push);
                got.push(reply.msg_id);
            }
            assert!(port.poll().is_none()); // sends what waits
        }
        assert_eq!(got, [1, 2, 3, 4, 5]);
        assert_eq!(port.unsent(), 0);
        assert!(port.push(ConnRef(1), 1, 20, &Pong::default()), "pushes go again");
    }
}
