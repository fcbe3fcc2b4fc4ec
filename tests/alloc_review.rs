//! Adversarial review (h-review2) of the alloc server's listeners: the socket files at start.
//!
//! The default config listens at `/tmp/tt_allocation_server.sock`, a path in a world-writable
//! directory that any local user (or a crashed original server) may have left something at.

mod support;

use std::os::unix::net::{UnixListener, UnixStream};

use support::{Listener, Rig, Setup};

/// A regular file at a legacy listener's path (`touch /tmp/tt_allocation_server.sock` by any
/// user) makes `bind_listener` fail and the whole daemon exit at start: one optional
/// compatibility listener takes every service down. It should be skipped with a warning, as
/// a live server's socket is, and the file left alone.
#[test]
fn review_a_regular_file_at_a_legacy_listener_path_does_not_stop_the_daemon() {
    let setup = Setup::default();
    let mut rig = Rig::prepare("review-file", &setup);
    std::fs::write(rig.path(Listener::Auto), b"not a socket").unwrap();
    rig.launch(&setup); // panics "the daemon exited at start" on the code under review
    assert_eq!(std::fs::read(rig.path(Listener::Auto)).unwrap(), b"not a socket");
    UnixStream::connect(rig.path(Listener::V4)).expect("the other listeners serve");
    assert!(rig.terminate().success());
    assert!(rig.path(Listener::Auto).exists(), "not ours: left alone");
}

/// (Coverage the suite lacks: S1's other half.) A live server's socket is left alone, the
/// listener skipped, and the file is still there, still that server's, after shutdown.
#[test]
fn review_a_live_servers_socket_is_left_alone_and_survives_our_shutdown() {
    let setup = Setup::default();
    let mut rig = Rig::prepare("review-live", &setup);
    let other = UnixListener::bind(rig.path(Listener::Auto)).unwrap();
    rig.launch(&setup);
    rig.wait_log(&["another server is live on this socket"]);
    let _c = UnixStream::connect(rig.path(Listener::Auto)).unwrap();
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_ok(), "the path still names the other server's socket");
    assert!(rig.terminate().success());
    assert!(rig.path(Listener::Auto).exists(), "the other server's socket survives");
}
