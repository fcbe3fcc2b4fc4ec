//! A lane in steady state allocates nothing: every pass of an echo round trip reuses its
//! buffers. A counting global allocator counts the allocations of the lane's thread while a
//! flag it sets is up (its own test binary, so no other test's allocator is replaced).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use corelane::runtime::{
    Agent, Completion, Ctx, IdleStrategy, LaneSpec, Reactor, ReactorChoice, ReactorConfig, Runtime,
    UringOptions,
};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded to the system allocator unchanged; counting touches only an
// atomic and a const-initialised thread local (neither allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's obligations are the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WARMUP: u64 = 200;

/// The tests of this file share the allocation count: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
const MEASURED: u64 = 2000;

/// Echoes every receive and pushes a timer's deadline further at each (a re-armed timer every
/// pass); counts the lane's allocations from message `WARMUP` to `WARMUP + MEASURED`.
struct Echo {
    listener: Option<UnixListener>,
    messages: u64,
    scratch: Vec<u8>,
    result: Arc<AtomicU64>,
}

impl Agent for Echo {
    fn name(&self) -> &str {
        "echo"
    }
    fn on_start(&mut self, ctx: &mut Ctx<'_>) -> std::io::Result<()> {
        self.scratch.reserve(64 * 1024);
        ctx.listen(0, self.listener.take().unwrap())
    }
    fn on_completion(&mut self, ctx: &mut Ctx<'_>, c: Completion) {
        match c {
            Completion::Accepted { fd, .. } => ctx.open(1, fd).unwrap(),
            Completion::Received { buf, .. } => {
                self.messages += 1;
                if self.messages == WARMUP {
                    ALLOCATIONS.store(0, Ordering::Relaxed);
                    COUNTING.with(|c| c.set(true));
                }
                if self.messages == WARMUP + MEASURED {
                    COUNTING.with(|c| c.set(false));
                    self.result.store(ALLOCATIONS.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                self.scratch.clear();
                self.scratch.extend_from_slice(ctx.reactor().data(&buf));
                ctx.send(1, &self.scratch).unwrap();
                ctx.timer(ctx.now + Duration::from_secs(60), 7).unwrap();
            }
            Completion::Closed { token } | Completion::Failed { token, .. } => {
                ctx.close(Ctx::local(token))
            }
            _ => {}
        }
    }
    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        0
    }
}

#[test]
fn steady_state_passes_do_not_allocate() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut backends = vec![ReactorConfig::from(ReactorChoice::Poll)];
    match Reactor::probe(ReactorChoice::IoUring) {
        Ok(_) => {
            for (defer_taskrun, skip_send_cqe) in [(false, false), (true, false), (false, true)] {
                let uring = UringOptions { defer_taskrun, skip_send_cqe };
                backends.push(ReactorConfig { choice: ReactorChoice::IoUring, uring });
            }
        }
        Err(e) => eprintln!("SKIPPING the io_uring backend in this test: {e}"),
    }
    for (n, choice) in backends.into_iter().enumerate() {
        let dir = std::env::temp_dir().join(format!("corelane-steady-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("echo.sock");
        let result = Arc::new(AtomicU64::new(u64::MAX));
        let agent = Echo {
            listener: Some(UnixListener::bind(&path).unwrap()),
            messages: 0,
            scratch: Vec::new(),
            result: result.clone(),
        };
        let lane = LaneSpec {
            name: "echo".into(),
            core: None,
            idle: IdleStrategy::backoff(),
            agents: vec![Box::new(agent)],
            waker: None,
        };
        let runtime = Runtime::start(vec![lane], choice).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for i in 0..WARMUP + MEASURED + 10 {
            let message = i.to_le_bytes();
            client.write_all(&message).unwrap();
            let mut echo = [0u8; 8];
            client.read_exact(&mut echo).unwrap();
            assert_eq!(echo, message);
        }
        runtime.shutdown();
        runtime.join();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            result.load(Ordering::Relaxed),
            0,
            "{choice:?}: allocations on the lane during {MEASURED} round trips"
        );
    }
}

/// Sets this lane thread's counting flag from the test's switch, in every pass (a second agent
/// on the control agent's lane: the control agent itself is not the test's to change).
struct Switch(Arc<std::sync::atomic::AtomicBool>);

impl Agent for Switch {
    fn name(&self) -> &str {
        "switch"
    }
    fn do_work(&mut self, _ctx: &mut Ctx<'_>) -> usize {
        let on = self.0.load(Ordering::Relaxed);
        if on != counting() {
            if on {
                ALLOCATIONS.store(0, Ordering::Relaxed);
            }
            COUNTING.with(|c| c.set(on));
        }
        0
    }
}

/// The control agent on its connection table answers pings without allocating: the session's
/// buffers, the reactor's output buffers and the connection's timer are all reused.
#[test]
fn the_control_agent_answers_pings_without_allocating() {
    let _serial = SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    use corelane::config::Config;
    use corelane::control::Client;
    use corelane::daemon::{
        ControlAgent, ControlCounters, ControlHandler, ControlSettings, Service, CONTROL,
    };
    use corelane::runtime::{Board, Shutdown};
    use std::sync::atomic::AtomicBool;

    let mut backends = vec![ReactorConfig::from(ReactorChoice::Poll)];
    match Reactor::probe(ReactorChoice::IoUring) {
        Ok(_) => backends.push(ReactorConfig::from(ReactorChoice::IoUring)),
        Err(e) => eprintln!("SKIPPING the io_uring backend in this test: {e}"),
    }
    for (n, choice) in backends.into_iter().enumerate() {
        let dir =
            std::env::temp_dir().join(format!("corelane-steady-ctl-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let counters = ControlCounters::in_memory(CONTROL.requests()).unwrap();
        let board = Board::new();
        let handler =
            ControlHandler::new(board.clone(), String::new(), Default::default(), counters);
        let settings = ControlSettings::from_config(&Config::default().control);
        let agent =
            ControlAgent::new(path.clone(), UnixListener::bind(&path).unwrap(), settings, handler);
        let switch = Arc::new(AtomicBool::new(false));
        let lane = LaneSpec {
            name: "control".into(),
            core: None,
            idle: IdleStrategy::backoff(),
            agents: vec![Box::new(agent), Box::new(Switch(switch.clone()))],
            waker: None,
        };
        let runtime = Runtime::start_with(vec![lane], choice, Shutdown::new(), board).unwrap();
        let mut client = Client::builder().timeout(Duration::from_secs(10)).connect(&path).unwrap();
        for _ in 0..WARMUP {
            client.ping().unwrap();
        }
        switch.store(true, Ordering::Relaxed);
        for _ in 0..MEASURED {
            client.ping().unwrap();
        }
        switch.store(false, Ordering::Relaxed);
        // Two more passes: the switch is seen off, and the count is final.
        client.ping().unwrap();
        client.ping().unwrap();
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        runtime.shutdown();
        runtime.join();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(allocations, 0, "{choice:?}: allocations on the lane during {MEASURED} pings");
    }
}
