//! Control routing on real lanes: a request forwarded over a link to a service agent on another
//! lane and answered from there, a subscription and its pushes, close notices, and the errors of
//! a service that is behind (busy) or gone (unavailable), on every backend.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelane::config::Config;
use corelane::control::proto::{Ping, Pong};
use corelane::control::{
    Client, ClientError, ConnRef, ControlPort, Routes, ToService, CODE_BUSY, CODE_UNAVAILABLE,
};
use corelane::daemon::{
    ControlAgent, ControlCounters, ControlHandler, ControlSettings, RequestSpec, RouteSlot,
};
use corelane::runtime::{
    link, Agent, Board, Ctx, IdleStrategy, LaneSpec, LaneWaker, Reactor, ReactorChoice,
    ReactorConfig, Runtime, Shutdown,
};

/// Answered from the service lane: a `Pong` echoing the ping, `server_time_ns` = 7.
const ECHO: u16 = 20;
/// A subscription: answered with `Pong { server_time_ns: 0 }`, then pushes 1, 2, 3 at once, and
/// one more (`server_time_ns` = 100 + n) each time the test raises `push_more`.
const SUBSCRIBE: u16 = 21;
/// Capacity of the request link (a power of two: links round up).
const CAPACITY: usize = 4;

fn backends() -> Vec<(&'static str, ReactorConfig)> {
    let mut out = vec![("poll", ReactorConfig::from(ReactorChoice::Poll))];
    match Reactor::probe(ReactorChoice::IoUring) {
        Ok(_) => out.push(("io_uring", ReactorConfig::from(ReactorChoice::IoUring))),
        Err(e) => eprintln!("SKIPPING the io_uring backend in this test: {e}"),
    }
    out
}

fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the test controls and sees of the service agent.
#[derive(Default)]
struct Knobs {
    /// While set, the agent takes no requests (its link fills).
    stalled: AtomicBool,
    /// Set: the agent drops its port (the service is gone).
    quit: AtomicBool,
    /// While set, the agent takes requests and holds them unanswered.
    hold: AtomicBool,
    /// Requests held so far.
    held: AtomicUsize,
    /// Set: push one more message to every subscription, then clear.
    push_more: AtomicBool,
    /// Close notices received.
    closed: Mutex<Vec<ConnRef>>,
}

struct Service {
    /// The route it serves.
    serves: u16,
    port: Option<ControlPort>,
    knobs: Arc<Knobs>,
    subscriptions: Vec<(ConnRef, u64)>,
    pushed: u64,
    /// Requests taken while `hold` was set (dropped with the port, never answered).
    held: Vec<ToService>,
}

impl Agent for Service {
    fn name(&self) -> &str {
        "service"
    }

    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        if self.knobs.quit.load(Ordering::Acquire) {
            self.port = None;
            self.held.clear();
            return 0;
        }
        let Some(port) = &mut self.port else { return 0 };
        let mut work = 0;
        if self.serves == SUBSCRIBE && self.knobs.push_more.swap(false, Ordering::AcqRel) {
            self.pushed += 1;
            for &(conn, id) in &self.subscriptions {
                let pong = Pong { client_time_ns: 0, server_time_ns: 100 + self.pushed };
                assert!(port.push(conn, id, SUBSCRIBE, &pong));
            }
        }
        if self.knobs.stalled.load(Ordering::Acquire) {
            return work;
        }
        while let Some(message) = port.poll() {
            work += 1;
            if self.knobs.hold.load(Ordering::Acquire) {
                self.held.push(message);
                self.knobs.held.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            let request = match message {
                ToService::Closed(conn) => {
                    self.subscriptions.retain(|(c, _)| *c != conn);
                    self.knobs.closed.lock().unwrap().push(conn);
                    continue;
                }
                ToService::Request(r) => r,
            };
            let Ok(ping) = <Ping as prost::Message>::decode(request.body.as_slice()) else {
                port.error(&request, 0x0100, "bad request body: not a ping");
                continue;
            };
            assert_eq!(request.msg_type, self.serves, "each route reaches its own agent");
            match request.msg_type {
                ECHO => port.respond(
                    &request,
                    &Pong { client_time_ns: ping.client_time_ns, server_time_ns: 7 },
                ),
                SUBSCRIBE => {
                    port.respond(&request, &Pong { client_time_ns: 0, server_time_ns: 0 });
                    for n in 1..=3 {
                        let pong = Pong { client_time_ns: 0, server_time_ns: n };
                        assert!(port.push(request.conn, request.msg_id, SUBSCRIBE, &pong));
                    }
                    self.subscriptions.push((request.conn, request.msg_id));
                }
                other => panic!("routed a msg_type this agent does not serve: {other}"),
            }
        }
        work
    }
}

/// A control lane and a service lane (which parks long: only its link's waker wakes it soon),
/// with the service's two routes wired through links.
struct Setup {
    runtime: Option<Runtime>,
    knobs: Arc<Knobs>,
    socket: PathBuf,
    service_waker: LaneWaker,
    dir: PathBuf,
}

impl Setup {
    fn start(name: &str, reactor: ReactorConfig) -> Self {
        let dir =
            std::env::temp_dir().join(format!("corelane-routes-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");

        let control_waker = LaneWaker::new().unwrap();
        let service_waker = LaneWaker::new().unwrap();
        let (to_service, from_control) = link(CAPACITY, &service_waker);
        let (to_control, from_service) = link(1024, &control_waker);
        let mut routes = Routes::new();
        routes.forward(ECHO, "echo", to_service, from_service).unwrap();
        // The second route shares the service's links: a second pair.
        let (to_service2, from_control2) = link(CAPACITY, &service_waker);
        let (to_control2, from_service2) = link(1024, &control_waker);
        routes.forward(SUBSCRIBE, "subscribe", to_service2, from_service2).unwrap();
        let slot: RouteSlot = Arc::new(Mutex::new(Some(routes)));

        let specs = [
            RequestSpec { msg_type: 1, name: "ping" },
            RequestSpec { msg_type: 2, name: "status" },
            RequestSpec { msg_type: 3, name: "config" },
            RequestSpec { msg_type: ECHO, name: "echo" },
            RequestSpec { msg_type: SUBSCRIBE, name: "subscribe" },
        ];
        let counters = ControlCounters::in_memory(&specs).unwrap();
        let board = Board::new();
        let handler =
            ControlHandler::new(board.clone(), String::new(), Default::default(), counters);
        let settings = ControlSettings::from_config(&Config::default().control);
        let control = ControlAgent::new(
            socket.clone(),
            UnixListener::bind(&socket).unwrap(),
            settings,
            handler,
        )
        .with_routes(slot);
        let knobs = Arc::new(Knobs::default());
        // One agent per route, both on the service lane.
        let echo = Service {
            serves: ECHO,
            port: Some(ControlPort::new(from_control, to_control)),
            knobs: knobs.clone(),
            subscriptions: Vec::new(),
            pushed: 0,
            held: Vec::new(),
        };
        let subscribe = Service {
            serves: SUBSCRIBE,
            port: Some(ControlPort::new(from_control2, to_control2)),
            knobs: knobs.clone(),
            subscriptions: Vec::new(),
            pushed: 0,
            held: Vec::new(),
        };
        let lanes = vec![
            LaneSpec {
                name: "control".into(),
                core: None,
                idle: IdleStrategy::Backoff {
                    spins: 10,
                    yields: 10,
                    max_park: Duration::from_millis(2),
                },
                agents: vec![Box::new(control)],
                waker: Some(control_waker),
            },
            LaneSpec {
                name: "service".into(),
                core: None,
                idle: IdleStrategy::Backoff {
                    spins: 10,
                    yields: 10,
                    max_park: Duration::from_secs(5),
                },
                agents: vec![Box::new(echo), Box::new(subscribe)],
                waker: Some(service_waker.clone()),
            },
        ];
        let runtime = Runtime::start_with(lanes, reactor, Shutdown::new(), board).unwrap();
        Self { runtime: Some(runtime), knobs, socket, service_waker, dir }
    }

    fn client(&self, timeout: Duration) -> Client {
        Client::builder().timeout(timeout).connect(&self.socket).unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown();
            assert!(runtime.join().is_none(), "no lane failed");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn remote_code(result: Result<Pong, ClientError>) -> u16 {
    match result {
        Err(ClientError::Remote { code, .. }) => code,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn a_forwarded_request_is_answered_from_another_lane() {
    for (name, reactor) in backends() {
        let setup = Setup::start(&format!("forward-{name}"), reactor);
        let mut client = setup.client(Duration::from_secs(10));
        for n in 0..200u64 {
            let pong: Pong = client.call(ECHO, &Ping { client_time_ns: n }).unwrap();
            assert_eq!((pong.client_time_ns, pong.server_time_ns), (n, 7), "{name}");
            // Local routes and the built-in ping interleave on the same connection.
            if n % 50 == 0 {
                client.ping().unwrap();
                assert_eq!(client.status().unwrap().lanes.len(), 2, "{name}");
            }
        }
        // Idle, the service lane parks (for up to 5 s): a request's link wakes it.
        std::thread::sleep(Duration::from_millis(200));
        let wakes_before = setup.service_waker.wakes();
        let pong: Pong = client.call(ECHO, &Ping { client_time_ns: 1 }).unwrap();
        assert_eq!(pong.client_time_ns, 1);
        assert!(setup.service_waker.wakes() > wakes_before, "{name}: the link woke the lane");
        // A body the service cannot decode: its own error reply, the connection kept.
        match client.request(ECHO, &corelane::control::proto::ConfigReply { toml: "x".into() }) {
            Err(ClientError::Remote { code: 0x0100, text }) => {
                assert_eq!(text, "bad request body: not a ping", "{name}")
            }
            other => panic!("{name}: expected the service's error, got {other:?}"),
        }
        client.ping().unwrap();
    }
}

#[test]
fn a_subscription_gets_its_pushes_in_order_until_the_connection_closes() {
    for (name, reactor) in backends() {
        let setup = Setup::start(&format!("push-{name}"), reactor);
        let mut client = setup.client(Duration::from_secs(10));
        let (sub, first): (_, Pong) = client.subscribe(SUBSCRIBE, &Ping::default()).unwrap();
        assert_eq!(first.server_time_ns, 0, "{name}");
        assert_eq!(sub.msg_type, SUBSCRIBE);
        // Pushes that arrive while another request is in flight are kept for later.
        let pong: Pong = client.call(ECHO, &Ping { client_time_ns: 9 }).unwrap();
        assert_eq!(pong.client_time_ns, 9);
        for n in 1..=3 {
            let push = client.next_push(Duration::from_secs(10)).unwrap();
            assert_eq!((push.msg_id, push.msg_type), (sub.msg_id, SUBSCRIBE), "{name}");
            assert_eq!(push.decode::<Pong>().unwrap().server_time_ns, n, "{name}");
        }
        // Nothing more until the service pushes again.
        assert!(matches!(
            client.next_push(Duration::from_millis(30)),
            Err(ClientError::Timeout(_))
        ));
        setup.knobs.push_more.store(true, Ordering::Release);
        setup.service_waker.wake();
        let push = client.next_push(Duration::from_secs(10)).unwrap();
        assert_eq!(push.decode::<Pong>().unwrap().server_time_ns, 101, "{name}");
        assert_eq!(client.dropped_pushes(), 0);

        // A connection that used no forwarded route is not announced when it closes; both
        // routes this one used are.
        let mut idle = setup.client(Duration::from_secs(10));
        idle.ping().unwrap();
        drop(idle);
        drop(client);
        wait_for(&format!("{name}: close notices"), Duration::from_secs(10), || {
            setup.knobs.closed.lock().unwrap().len() >= 2
        });
        std::thread::sleep(Duration::from_millis(50));
        let closed = setup.knobs.closed.lock().unwrap().clone();
        assert_eq!(closed.len(), 2, "{name}: one notice per route the connection used");
        assert_eq!(closed[0], closed[1], "{name}: the same connection");

        // The service pushes to the closed subscription no more: a push for a connection
        // that is gone is dropped by the control agent, and nothing breaks.
        setup.knobs.push_more.store(true, Ordering::Release);
        setup.service_waker.wake();
        let mut after = setup.client(Duration::from_secs(10));
        after.ping().unwrap();
    }
}

#[test]
fn a_service_that_is_behind_is_busy_and_one_that_is_gone_is_unavailable() {
    for (name, reactor) in backends() {
        let setup = Setup::start(&format!("busy-{name}"), reactor);
        let mut client = setup.client(Duration::from_millis(100));
        client.call::<Pong>(ECHO, &Ping::default()).unwrap();

        setup.knobs.stalled.store(true, Ordering::Release);
        // Each request waits in the link (the client times out); once it is full the next is
        // refused at once with the busy error.
        let mut timeouts = 0;
        let code = loop {
            match client.call::<Pong>(ECHO, &Ping::default()) {
                Err(ClientError::Timeout(_)) => timeouts += 1,
                other => break remote_code(other),
            }
            assert!(timeouts <= CAPACITY, "{name}: the link holds at most {CAPACITY}");
        };
        assert_eq!(code, CODE_BUSY, "{name}");
        assert_eq!(timeouts, CAPACITY, "{name}: refused only once the link was full");
        client.ping().unwrap();

        // Back in service: the queued requests are answered (late, skipped by the client),
        // and new ones are answered again.
        setup.knobs.stalled.store(false, Ordering::Release);
        setup.service_waker.wake();
        let mut client = setup.client(Duration::from_secs(10));
        wait_for(&format!("{name}: the service catches up"), Duration::from_secs(10), || {
            match client.call::<Pong>(ECHO, &Ping::default()) {
                Ok(_) => true,
                Err(ClientError::Remote { code: CODE_BUSY, .. }) => false,
                Err(e) => panic!("{name}: {e}"),
            }
        });

        // The service drops its port: its route answers `service unavailable`.
        setup.knobs.quit.store(true, Ordering::Release);
        setup.service_waker.wake();
        wait_for(&format!("{name}: the route is unavailable"), Duration::from_secs(10), || {
            match client.call::<Pong>(ECHO, &Ping::default()) {
                Err(ClientError::Remote { code, text }) => {
                    assert_eq!(code, CODE_UNAVAILABLE, "{name}: {text}");
                    assert_eq!(text, "service unavailable: 'echo' has stopped");
                    true
                }
                Ok(_) => false,
                Err(e) => panic!("{name}: {e}"),
            }
        });
        client.ping().unwrap();
    }
}

#[test]
fn a_request_the_service_took_but_never_answered_is_unavailable_once_it_stops() {
    for (name, reactor) in backends() {
        let setup = Setup::start(&format!("stopped-{name}"), reactor);
        let mut client = setup.client(Duration::from_secs(10));
        client.call::<Pong>(ECHO, &Ping::default()).unwrap();

        // The service takes the next request and holds it; then it stops. The client hears
        // that the service is gone, at once, not after its 10 s timeout.
        setup.knobs.hold.store(true, Ordering::Release);
        let knobs = setup.knobs.clone();
        let waker = setup.service_waker.clone();
        let stopper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            knobs.quit.store(true, Ordering::Release);
            waker.wake();
        });
        let started = Instant::now();
        let code = remote_code(client.call::<Pong>(ECHO, &Ping::default()));
        stopper.join().unwrap();
        assert_eq!(code, CODE_UNAVAILABLE, "{name}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name}: answered when it stopped");
        client.ping().unwrap();
    }
}

#[test]
fn requests_a_service_holds_unanswered_are_bounded_per_route() {
    use corelane::daemon::MAX_PENDING_PER_ROUTE;
    use corelane::wire::{encode, Flags, ProtocolVersion};
    use std::io::Write;

    for (name, reactor) in backends() {
        let setup = Setup::start(&format!("bound-{name}"), reactor);
        setup.knobs.hold.store(true, Ordering::Release);
        // One connection sends requests the service takes and never answers, a link-full at a
        // time (the link holds CAPACITY), until the route's table of pending requests is full.
        let mut raw = std::os::unix::net::UnixStream::connect(&setup.socket).unwrap();
        let body = <Ping as prost::Message>::encode_to_vec(&Ping::default());
        let mut frames = Vec::new();
        let mut sent = 0;
        while sent < MAX_PENDING_PER_ROUTE {
            frames.clear();
            let n = CAPACITY.min(MAX_PENDING_PER_ROUTE - sent);
            for i in 0..n {
                let id = (sent + i + 1) as u64;
                encode(ProtocolVersion::V2, ECHO, Flags::EMPTY, id, &body, &mut frames);
            }
            raw.write_all(&frames).unwrap();
            sent += n;
            wait_for(&format!("{name}: {sent} held"), Duration::from_secs(10), || {
                setup.knobs.held.load(Ordering::Acquire) == sent
            });
        }
        // The next request, from any connection, is refused at once instead of queued.
        let mut client = setup.client(Duration::from_secs(10));
        match client.call::<Pong>(ECHO, &Ping::default()) {
            Err(ClientError::Remote { code, text }) => {
                assert_eq!(code, CODE_BUSY, "{name}: {text}");
                let want =
                    format!("service busy: 'echo' has {MAX_PENDING_PER_ROUTE} requests unanswered");
                assert_eq!(text, want, "{name}");
            }
            other => panic!("{name}: expected busy, got {other:?}"),
        }
        assert_eq!(setup.knobs.held.load(Ordering::Acquire), MAX_PENDING_PER_ROUTE, "{name}");
        // A connection that closes takes its pending requests with it: room again.
        drop(raw);
        let mut client = setup.client(Duration::from_millis(200));
        wait_for(&format!("{name}: room again"), Duration::from_secs(10), || {
            match client.call::<Pong>(ECHO, &Ping::default()) {
                Err(ClientError::Remote { code: CODE_BUSY, .. }) => false,
                Err(ClientError::Timeout(_)) => true, // taken and held
                other => panic!("{name}: expected to be held, got {other:?}"),
            }
        });
    }
}
