//! iceoryx2's endpoints: publish-subscribe on an `ipc::Service` (zero-copy shared memory
//! between processes) with a `[u8]` slice payload of the channel's length.
//!
//! Every process makes its own node (signal handling off: the harness keeps the default
//! signal behaviour) with a config of its own: root path in the measurement's directory and a
//! file prefix naming this run and measurement, so nothing of one measurement meets another's
//! and the run's clean-up finds every file iceoryx2 made. The service keeps `ch.depth`
//! samples per subscriber, no history, and overflows safely (a full subscriber queue drops
//! its oldest sample, as corelane's ring overwrites its oldest slot).
//!
//! A `wake` channel adds an event service (the same name + `/wake`) beside it (iceoryx2's way to let
//! a subscriber sleep): the producer's `Notifier::notify` after each send, the consumer's
//! `Listener::timed_wait` (in slices of [`super::PARK_SLICE`]) whenever `receive` finds
//! nothing.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::event::PortFactory as EventFactory;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;

use super::Channel;

/// The producer: `loan_slice_uninit`, `write_from_slice`, `send`.
#[derive(Debug)]
pub struct IceoryxTx {
    // Dropped in this order: ports, services, node.
    publisher: Publisher<ipc::Service, [u8], ()>,
    /// A `wake` channel's notifier (and its event service).
    notifier: Option<(Notifier<ipc::Service>, EventFactory<ipc::Service>)>,
    _service: PortFactory<ipc::Service, [u8], ()>,
    _node: Node<ipc::Service>,
}

impl IceoryxTx {
    pub fn new(ch: &Channel) -> Result<Self, String> {
        let node = node(ch)?;
        let service = service(ch, &node)?;
        let publisher = service
            .publisher_builder()
            .initial_max_slice_len(ch.len)
            .create()
            .map_err(|e| format!("iceoryx2: cannot create the publisher: {e}"))?;
        let notifier = match ch.wake {
            false => None,
            true => {
                let events = event_service(ch, &node)?;
                let notifier = events
                    .notifier_builder()
                    .create()
                    .map_err(|e| format!("iceoryx2: cannot create the notifier: {e}"))?;
                Some((notifier, events))
            }
        };
        Ok(Self { publisher, notifier, _service: service, _node: node })
    }

    /// Loans a sample of `payload.len()` bytes, copies `payload` in, sends it. Returns how
    /// many subscribers it reached.
    #[inline]
    pub fn send(&mut self, payload: &[u8]) -> Result<usize, String> {
        let sample = self
            .publisher
            .loan_slice_uninit(payload.len())
            .map_err(|e| format!("iceoryx2: loan failed: {e}"))?;
        sample.write_from_slice(payload).send().map_err(|e| format!("iceoryx2: send failed: {e}"))
    }

    /// [`send`](Self::send), then, on a `wake` channel, `notify` (the listeners it reached are
    /// not counted).
    #[inline]
    pub fn send_notifying(&mut self, payload: &[u8]) -> Result<usize, String> {
        let reached = self.send(payload)?;
        if let Some((notifier, _)) = &self.notifier {
            notifier.notify().map_err(|e| format!("iceoryx2: notify failed: {e}"))?;
        }
        Ok(reached)
    }
}

/// The consumer: `receive`, and the payload copied out into the caller's buffer (as
/// corelane's copy-out read does) before the sample is released.
#[derive(Debug)]
pub struct IceoryxRx {
    subscriber: Subscriber<ipc::Service, [u8], ()>,
    /// A `wake` channel's listener (and its event service).
    listener: Option<(Listener<ipc::Service>, EventFactory<ipc::Service>)>,
    _service: PortFactory<ipc::Service, [u8], ()>,
    _node: Node<ipc::Service>,
}

impl IceoryxRx {
    pub fn new(ch: &Channel) -> Result<Self, String> {
        let node = node(ch)?;
        let service = service(ch, &node)?;
        let subscriber = service
            .subscriber_builder()
            .buffer_size(ch.depth as usize)
            .create()
            .map_err(|e| format!("iceoryx2: cannot create the subscriber: {e}"))?;
        let listener = match ch.wake {
            false => None,
            true => {
                let events = event_service(ch, &node)?;
                let listener = events
                    .listener_builder()
                    .create()
                    .map_err(|e| format!("iceoryx2: cannot create the listener: {e}"))?;
                Some((listener, events))
            }
        };
        Ok(Self { subscriber, listener, _service: service, _node: node })
    }

    /// [`recv`](Self::recv); when it finds nothing on a `wake` channel, sleeps in the
    /// listener's `timed_wait` until a notification (at most `slice`) and receives again.
    #[inline]
    pub fn recv_parked(
        &mut self,
        buf: &mut [u8],
        slice: Duration,
    ) -> Result<Option<usize>, String> {
        if let Some(n) = self.recv(buf)? {
            return Ok(Some(n));
        }
        if let Some((listener, _)) = &self.listener {
            listener
                .timed_wait(|_| {}, slice)
                .map_err(|e| format!("iceoryx2: timed_wait failed: {e}"))?;
        }
        self.recv(buf)
    }

    /// The next sample's length, its payload copied into `buf`; `None` if none is waiting.
    #[inline]
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, String> {
        match self.subscriber.receive() {
            Ok(Some(sample)) => {
                let payload = sample.payload();
                let Some(out) = buf.get_mut(..payload.len()) else {
                    return Err(format!(
                        "iceoryx2: a {}-byte sample does not fit the {}-byte buffer",
                        payload.len(),
                        buf.len()
                    ));
                };
                out.copy_from_slice(payload);
                Ok(Some(payload.len()))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("iceoryx2: receive failed: {e}")),
        }
    }
}

/// This measurement's config: root path and prefix of its own (module doc).
///
/// A `wake` channel's listener is a Unix datagram socket in the root path, named prefix +
/// a 39-digit id + `.event`, which the measurement's directory is too deep for (a socket path
/// holds at most 107 bytes); so there the root is the shared-memory directory itself, where
/// what iceoryx2 puts carries the measurement's prefix, and the service and node directories
/// are pointed back into the measurement's directory.
fn config(ch: &Channel) -> Result<Config, String> {
    let mut config = Config::default();
    let path = |p: &std::ffi::OsStr| {
        Path::new(p.as_bytes()).map_err(|e| format!("iceoryx2: bad path {p:?}: {e:?}"))
    };
    let mine = ch.dir.join("iceoryx2");
    let shm = super::shm_dir();
    let root = match (ch.wake, mine.strip_prefix(&shm)) {
        (true, Ok(inside)) => {
            config.global.service.directory = path(inside.join("services").as_os_str())?;
            config.global.node.directory = path(inside.join("nodes").as_os_str())?;
            shm.clone()
        }
        _ => mine,
    };
    let mut root = root.into_os_string();
    root.push("/");
    config.global.set_root_path(&path(&root)?);
    config.global.prefix = FileName::new(ch.iceoryx_prefix.as_bytes())
        .map_err(|e| format!("iceoryx2: bad prefix {:?}: {e:?}", ch.iceoryx_prefix))?;
    Ok(config)
}

fn node(ch: &Channel) -> Result<Node<ipc::Service>, String> {
    NodeBuilder::new()
        .config(&config(ch)?)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| format!("iceoryx2: cannot create a node: {e}"))
}

/// A `wake` channel's event service: the publish-subscribe service's name, one notifier, one
/// listener.
fn event_service(
    ch: &Channel,
    node: &Node<ipc::Service>,
) -> Result<EventFactory<ipc::Service>, String> {
    let name = format!("corelane-perf/handoff/stream{}/wake", ch.index);
    let name: ServiceName =
        name.as_str().try_into().map_err(|e| format!("iceoryx2: bad service name: {e:?}"))?;
    node.service_builder(&name)
        .event()
        .max_notifiers(1)
        .max_listeners(1)
        .max_nodes(2)
        .open_or_create()
        .map_err(|e| format!("iceoryx2: cannot open or create event service {name}: {e}"))
}

fn service(
    ch: &Channel,
    node: &Node<ipc::Service>,
) -> Result<PortFactory<ipc::Service, [u8], ()>, String> {
    let name = format!("corelane-perf/handoff/stream{}", ch.index);
    let name: ServiceName =
        name.as_str().try_into().map_err(|e| format!("iceoryx2: bad service name: {e:?}"))?;
    node.service_builder(&name)
        .publish_subscribe::<[u8]>()
        .subscriber_max_buffer_size(ch.depth as usize)
        .history_size(0)
        .enable_safe_overflow(true)
        .max_publishers(1)
        .max_subscribers(1)
        .max_nodes(2)
        .open_or_create()
        .map_err(|e| format!("iceoryx2: cannot open or create service {name}: {e}"))
}
