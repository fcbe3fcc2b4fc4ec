//! A tiny control server for client and pool tests: a std thread with a `UnixListener` in a
//! temporary directory, one thread per connection, each driving a [`Session`] with real time.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use super::proto::{ConfigReply, ConfigRequest, LaneStatus, Status, StatusRequest};
use super::route::answer;
use super::{Answer, Handler, RequestRef, Session, SessionConfig, Verdict, MSG_CONFIG, MSG_STATUS};

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh, empty directory under the system temp dir, unique to this process and call.
pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("corelane-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Handler answering with fixed data and the real clock.
pub(crate) struct TestHandler {
    start: Instant,
}

/// The TOML the test server reports.
pub(crate) const TEST_TOML: &str = "[control]\nsocket = \"test\"\n";

/// The status the test server reports (connections aside).
pub(crate) fn test_status() -> Status {
    Status {
        version: "test".to_owned(),
        uptime_ms: 5,
        reactor: "threads".to_owned(),
        lanes: vec![LaneStatus {
            name: "lane0".to_owned(),
            core: 1,
            idle: "park".to_owned(),
            agents: vec!["control".to_owned()],
            ..LaneStatus::default()
        }],
        services: Vec::new(),
        connections: 1,
    }
}

impl Handler for TestHandler {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap()
    }
    fn request(&mut self, request: RequestRef<'_>, reply: &mut Vec<u8>) -> Answer {
        let answered = match request.msg_type {
            MSG_STATUS => answer(request.body, reply, |_: StatusRequest| test_status()),
            MSG_CONFIG => answer(request.body, reply, |_: ConfigRequest| ConfigReply {
                toml: TEST_TOML.to_owned(),
            }),
            _ => return Answer::Unknown,
        };
        answered.map_or_else(Answer::Error, |()| Answer::Respond)
    }
}

/// The running server; stops, closes its connections and removes its directory when dropped.
pub(crate) struct TestServer {
    dir: PathBuf,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub(crate) fn start() -> Self {
        Self::start_with(SessionConfig::default())
    }

    pub(crate) fn start_with(config: SessionConfig) -> Self {
        let dir = temp_dir("control");
        let path = dir.join("control.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, conns, accepted) = (stop.clone(), conns.clone(), accepted.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    accepted.fetch_add(1, Ordering::Relaxed);
                    conns.lock().unwrap().push(stream.try_clone().unwrap());
                    let config = config.clone();
                    std::thread::spawn(move || serve(stream, config));
                }
            })
        };
        Self { dir, path, stop, conns, accepted, thread: Some(thread) }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Connections accepted so far.
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Shuts down every connection accepted so far, as a daemon restart would.
    pub(crate) fn kill_connections(&self) {
        for stream in self.conns.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.kill_connections();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn serve(mut stream: UnixStream, config: SessionConfig) {
    let mut handler = TestHandler { start: Instant::now() };
    let mut session = Session::new(config, Instant::now());
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let verdict = session.on_bytes(&buf[..n], Instant::now(), &mut handler);
        if stream.write_all(session.output()).is_err() {
            return;
        }
        let written = session.output().len();
        session.consume_output(written);
        if verdict == Verdict::Close {
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
    }
}
