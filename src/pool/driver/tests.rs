//! The driver against a fake clock and [`FakeBackend`]: spec §8 items 38-53 and the traps.

use std::collections::HashSet;

use super::*;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// The fake clock's start: a boot some seconds ago.
const T0: u64 = 50 * S;

const BASE: &str = r#"
[driver]
stream_id_range = "20000-20002"
[policies]
allow_dynamic_streams = true
default_profile = "small"
announce_period_ms = 1000
lease_keepalive_interval_ms = 1000
lease_expiry_grace_intervals = 3
node_id_reuse_cooldown_ms = 1000
[profiles.camera]
header_nslots = 64
payload_pools = [{ pool_id = 1, stride_bytes = 1048576 }, { pool_id = 2, stride_bytes = 4096 }]
[profiles.small]
header_nslots = 8
payload_pools = [{ pool_id = 1, stride_bytes = 64 }]
[streams.cam]
stream_id = 10000
profile = "camera"
[streams.aux]
stream_id = 10001
profile = "small"
"#;

const CAM: u32 = 10000;
const AUX: u32 = 10001;
const PRODUCER: u8 = Role::Producer.to_wire();
const CONSUMER: u8 = Role::Consumer.to_wire();

fn config_with(edit: &str) -> PoolConfig {
    // Later keys of a table in `edit` would be duplicates, so edits replace whole lines.
    let mut text = BASE.to_owned();
    for line in edit.lines().filter(|l| !l.trim().is_empty()) {
        let key = line.split('=').next().unwrap().trim();
        let existing = text.lines().find(|l| l.split('=').next().unwrap().trim() == key);
        text = match existing {
            Some(old) => text.replacen(old, line, 1),
            None => panic!("edit {line:?} names no key of BASE"),
        };
    }
    PoolConfig::from_toml_str(&text).unwrap()
}

fn driver_with(config: &PoolConfig, backend: FakeBackend) -> Driver<FakeBackend> {
    Driver::new(config, backend, 7, T0).unwrap()
}

fn driver() -> Driver<FakeBackend> {
    driver_with(&config_with(""), FakeBackend::default())
}

fn request(client_id: u32, stream_id: u32, role: u8) -> AttachRequest {
    AttachRequest {
        correlation_id: i64::from(client_id) * 100 + 1,
        stream_id,
        client_id,
        role,
        expected_layout_version: 1,
        publish_mode: None,
        require_hugepages: HugepagesPolicy::Unspecified.to_wire(),
        desired_node_id: None,
    }
}

fn key(client_id: u32) -> ClientKey {
    ClientKey(u64::from(client_id) + 1000)
}

/// Sends the attach and returns the actions it queued (without logs) and its response.
fn attach_req(
    d: &mut Driver<FakeBackend>,
    req: &AttachRequest,
    now: u64,
) -> (Vec<Action>, AttachResponse) {
    d.attach(key(req.client_id), req, now);
    let actions = peer_actions(d);
    let response = actions
        .iter()
        .find_map(|a| match a {
            Action::Reply { to, msg: Response::Attach(r) } => {
                assert_eq!(*to, key(req.client_id), "reply goes to the requesting connection");
                Some(r.clone())
            }
            _ => None,
        })
        .expect("an attach response");
    (actions, response)
}

fn attach(
    d: &mut Driver<FakeBackend>,
    client: u32,
    stream: u32,
    role: u8,
    now: u64,
) -> AttachResponse {
    attach_req(d, &request(client, stream, role), now).1
}

fn attach_ok(
    d: &mut Driver<FakeBackend>,
    client: u32,
    stream: u32,
    role: u8,
    now: u64,
) -> AttachResponse {
    let r = attach(d, client, stream, role, now);
    assert_eq!(r.code, ResponseCode::Ok, "{}", r.error_message);
    r
}

/// Queued actions other than logs.
fn peer_actions(d: &mut Driver<FakeBackend>) -> Vec<Action> {
    d.drain_actions().filter(|a| !matches!(a, Action::Log(_))).collect()
}

fn logs(d: &mut Driver<FakeBackend>) -> Vec<DriverEvent> {
    d.drain_actions()
        .filter_map(|a| match a {
            Action::Log(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn assert_refused(r: &AttachResponse, code: ResponseCode, message: &str) {
    assert_eq!(r.code, code, "message {:?}", r.error_message);
    assert!(
        r.error_message.starts_with(message),
        "{:?} should start with {message:?}",
        r.error_message
    );
    assert_error_shape(r);
}

/// §5.3: a non-OK response has every optional field null, no pools, an empty URI.
fn assert_error_shape(r: &AttachResponse) {
    assert_ne!(r.code, ResponseCode::Ok);
    assert_eq!(r.lease_id, None);
    assert_eq!(r.lease_expiry_timestamp_ns, None);
    assert_eq!(r.stream_id, None);
    assert_eq!(r.epoch, None);
    assert_eq!(r.layout_version, None);
    assert_eq!(r.header_nslots, None);
    assert_eq!(r.header_slot_bytes, None);
    assert_eq!(r.node_id, None);
    assert!(r.payload_pools.is_empty());
    assert_eq!(r.header_region_uri, "");
    assert!(!r.error_message.is_empty() && r.error_message.len() <= MAX_ERROR_MESSAGE_BYTES);
}

fn revokes(actions: &[Action]) -> Vec<&LeaseRevoked> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(Notice::LeaseRevoked(r)) => Some(r),
            _ => None,
        })
        .collect()
}

fn announces(actions: &[Action]) -> Vec<&Announce> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Broadcast(Notice::Announce(a)) => Some(a),
            _ => None,
        })
        .collect()
}

/// Index of the first action matching `f`.
fn position(actions: &[Action], f: impl Fn(&Action) -> bool) -> usize {
    actions.iter().position(f).expect("action present")
}

fn is_revoke(a: &Action) -> bool {
    matches!(a, Action::Broadcast(Notice::LeaseRevoked(_)))
}

fn is_announce(a: &Action) -> bool {
    matches!(a, Action::Broadcast(Notice::Announce(_)))
}

fn is_reply(a: &Action) -> bool {
    matches!(a, Action::Reply { .. })
}

fn keepalive_of(r: &AttachResponse, client_id: u32, role: u8) -> Keepalive {
    Keepalive {
        lease_id: r.lease_id.unwrap(),
        stream_id: r.stream_id.unwrap(),
        client_id,
        role,
        client_timestamp_ns: 0,
    }
}

fn detach_of(r: &AttachResponse, client_id: u32, role: u8) -> DetachRequest {
    DetachRequest {
        correlation_id: 99,
        lease_id: r.lease_id.unwrap(),
        stream_id: r.stream_id.unwrap(),
        client_id,
        role,
    }
}

fn detach(
    d: &mut Driver<FakeBackend>,
    req: &DetachRequest,
    now: u64,
) -> (Vec<Action>, DetachResponse) {
    d.detach(ClientKey(5), req, now);
    let actions = peer_actions(d);
    let response = actions
        .iter()
        .find_map(|a| match a {
            Action::Reply { msg: Response::Detach(r), .. } => Some(r.clone()),
            _ => None,
        })
        .expect("a detach response");
    (actions, response)
}

#[test]
fn c38_client_id_zero_invalid_and_second_lease_rejected() {
    let mut d = driver();
    let r = attach(&mut d, 0, CAM, CONSUMER, T0);
    assert_refused(&r, ResponseCode::InvalidParams, "client_id must be non-zero");

    attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    // Same client, same stream and role.
    let r = attach(&mut d, 1, CAM, CONSUMER, T0);
    assert_refused(&r, ResponseCode::Rejected, "client_id already attached");
    // Driver-wide (T12): another stream and another role are refused too.
    let r = attach(&mut d, 1, AUX, PRODUCER, T0);
    assert_refused(&r, ResponseCode::Rejected, "client_id already attached");
    assert_eq!(d.lease_count(), 1);
    // Another client ID is fine.
    attach_ok(&mut d, 2, AUX, PRODUCER, T0);
}

#[test]
fn c39_layout_version_2_rejected_and_0_ok_with_version_1() {
    let mut d = driver();
    let mut req = request(1, CAM, CONSUMER);
    req.expected_layout_version = 2;
    let (_, r) = attach_req(&mut d, &req, T0);
    // T17: REJECTED, as C answers, not INVALID_PARAMS.
    assert_refused(&r, ResponseCode::Rejected, "layout version mismatch");
    assert!(r.error_message.contains("got 2"), "{}", r.error_message);

    req.expected_layout_version = 0;
    let (_, r) = attach_req(&mut d, &req, T0);
    assert_eq!(r.code, ResponseCode::Ok);
    assert_eq!(r.layout_version, Some(1));
}

#[test]
fn c40_unknown_stream_rejected_when_not_creatable() {
    // Dynamic streams off.
    let mut d = driver_with(&config_with("allow_dynamic_streams = false"), FakeBackend::default());
    let r = attach(&mut d, 1, 4242, PRODUCER, T0);
    assert_refused(&r, ResponseCode::Rejected, "stream not provisioned");
    let r = attach(&mut d, 1, 0, PRODUCER, T0);
    assert_refused(&r, ResponseCode::Rejected, "stream not provisioned");

    // Dynamic on, but REQUIRE_EXISTING.
    let mut d = driver();
    let mut req = request(1, 4242, CONSUMER);
    req.publish_mode = Some(PublishMode::RequireExisting.to_wire());
    let (_, r) = attach_req(&mut d, &req, T0);
    assert_refused(&r, ResponseCode::Rejected, "stream not provisioned");
    // Static streams count as provisioned under REQUIRE_EXISTING.
    req.stream_id = CAM;
    assert_eq!(attach_req(&mut d, &req, T0).1.code, ResponseCode::Ok);

    // Null (and the SBE null 255) mean EXISTING_OR_CREATE: the stream is made from the
    // default profile.
    for (client, mode) in
        [(2, None), (3, Some(NULL_U8)), (4, Some(PublishMode::ExistingOrCreate.to_wire()))]
    {
        let mut req = request(client, 4240 + client, PRODUCER);
        req.publish_mode = mode;
        let (_, r) = attach_req(&mut d, &req, T0);
        assert_eq!(r.code, ResponseCode::Ok, "{mode:?}: {}", r.error_message);
        assert_eq!(r.stream_id, Some(4240 + client));
        assert_eq!(r.header_nslots, Some(8)); // the "small" profile
        let status = d.stream(4240 + client).unwrap();
        assert!(status.dynamic);
        assert_eq!(status.profile, "small");
    }
    // An unknown value is not silently EXISTING_OR_CREATE.
    let mut req = request(9, 4249, PRODUCER);
    req.publish_mode = Some(7);
    let (_, r) = attach_req(&mut d, &req, T0);
    assert_refused(&r, ResponseCode::InvalidParams, "invalid publish mode");
}

#[test]
fn c41_second_producer_rejected_several_consumers_ok() {
    let mut d = driver();
    attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    let r = attach(&mut d, 2, CAM, PRODUCER, T0);
    assert_refused(&r, ResponseCode::Rejected, "producer already attached");
    for client in 3..8 {
        attach_ok(&mut d, client, CAM, CONSUMER, T0);
    }
    let status = d.stream(CAM).unwrap();
    assert_eq!(status.consumers, 5);
    assert_eq!(status.producer.unwrap().client_id, 1);
    // A producer on another stream is independent.
    attach_ok(&mut d, 2, AUX, PRODUCER, T0);
}

#[test]
fn c42_producer_attach_bumps_epoch_creates_files_then_announces_before_ok() {
    let mut d = driver();
    // A consumer first: the stream's first epoch is created for it.
    let consumer = attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    let first = consumer.epoch.unwrap();
    assert_eq!(first, T0, "epoch = max(now, 0 + 1)");

    let now = T0 + 10 * MS;
    let (actions, r) = attach_req(&mut d, &request(2, CAM, PRODUCER), now);
    assert_eq!(r.code, ResponseCode::Ok);
    let epoch = r.epoch.unwrap();
    assert!(epoch > first);
    assert_eq!(epoch, now);
    assert_eq!(d.backend().created_epochs(CAM), vec![first, epoch]);
    assert_eq!(r.header_region_uri, FakeBackend::header_uri(CAM, epoch, false));

    // ShmPoolAnnounce, then the OK response; nothing else.
    assert_eq!(actions.len(), 2);
    assert!(is_announce(&actions[0]) && is_reply(&actions[1]));
    let announce = announces(&actions)[0];
    assert_eq!(announce.stream_id, CAM);
    assert_eq!(announce.epoch, epoch);
    assert_eq!(announce.producer_id, 2);
    assert_eq!(announce.announce_timestamp_ns, now);
    assert_eq!(announce.announce_clock_domain, ClockDomain::Monotonic);
    assert_eq!(announce.header_region_uri, r.header_region_uri);
    assert_eq!(announce.payload_pools, r.payload_pools);

    // Same-instant bumps still rise: epoch + 1 when the clock has not moved.
    let det = detach_of(&r, 2, PRODUCER);
    let (actions, _) = detach(&mut d, &det, now);
    assert_eq!(announces(&actions)[0].epoch, now + 1);
}

#[test]
fn c43_ok_response_carries_every_field_and_errors_carry_none() {
    let mut d = driver();
    let req = AttachRequest { correlation_id: -77, ..request(1, CAM, PRODUCER) };
    let (_, r) = attach_req(&mut d, &req, T0);
    assert_eq!(r.code, ResponseCode::Ok);
    assert_eq!(r.correlation_id, -77);
    assert!(r.lease_id.is_some_and(|id| id != 0));
    assert_eq!(r.lease_expiry_timestamp_ns, Some(T0 + 3 * S));
    assert_eq!(r.stream_id, Some(CAM));
    assert_eq!(r.epoch, Some(T0));
    assert_eq!(r.layout_version, Some(LAYOUT_VERSION));
    assert_eq!(r.header_nslots, Some(64));
    assert_eq!(r.header_slot_bytes, Some(256));
    assert!(r.node_id.is_some_and(|n| n != 0 && n != NULL_U32));
    assert_eq!(r.error_message, "");
    assert_eq!(r.header_region_uri, FakeBackend::header_uri(CAM, T0, false));
    let pools: Vec<(u16, u32, u32, String)> = r
        .payload_pools
        .iter()
        .map(|p| (p.pool_id, p.pool_nslots, p.stride_bytes, p.region_uri.clone()))
        .collect();
    assert_eq!(
        pools,
        vec![
            (1, 64, 1048576, FakeBackend::pool_uri(CAM, T0, 1, false)),
            (2, 64, 4096, FakeBackend::pool_uri(CAM, T0, 2, false)),
        ]
    );

    // An error response: correlation echoed, nulls, bounded message (a 5000-byte backend error).
    let mut d = driver();
    d.backend_mut().fail_creates = Some("é".repeat(2500));
    let req = AttachRequest { correlation_id: 31, ..request(1, CAM, PRODUCER) };
    let (_, r) = attach_req(&mut d, &req, T0);
    assert_eq!(r.correlation_id, 31);
    assert_refused(&r, ResponseCode::InternalError, "shm creation failed: é");
    assert!(r.error_message.len() > 1000, "cut near the limit, not emptied");
}

#[test]
fn c45_no_keepalive_expires_with_revoke_then_epoch_bump_and_announce() {
    let mut d = driver();
    let consumer = attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    let producer = attach_ok(&mut d, 2, CAM, PRODUCER, T0 + MS);
    let epoch = producer.epoch.unwrap();
    // Keep the consumer alive; the producer goes silent.
    let expiry = producer.lease_expiry_timestamp_ns.unwrap();
    assert_eq!(expiry, T0 + MS + 3 * S);
    for t in [T0 + S, T0 + 2 * S, T0 + 3 * S] {
        assert!(d.keepalive(key(1), &keepalive_of(&consumer, 1, CONSUMER), t));
        d.tick(t);
    }
    d.drain_actions().for_each(drop);
    d.tick(expiry - 1);
    assert!(revokes(&peer_actions(&mut d)).is_empty(), "not before the deadline");

    d.tick(expiry);
    let actions = peer_actions(&mut d);
    let revoked = revokes(&actions);
    assert_eq!(revoked.len(), 1);
    let r = revoked[0];
    assert_eq!((r.lease_id, r.stream_id, r.client_id), (producer.lease_id.unwrap(), CAM, 2));
    assert_eq!((r.role, r.reason), (Role::Producer, RevokeReason::Expired));
    assert_eq!(r.timestamp_ns, expiry);
    assert_eq!(r.error_message, "lease expired");
    // Revoke first, then the announce of the new epoch, with no producer.
    assert!(position(&actions, is_revoke) < position(&actions, is_announce));
    let new_epoch =
        announces(&actions).iter().find(|a| a.epoch > epoch).map(|a| (a.epoch, a.producer_id));
    assert_eq!(new_epoch, Some((expiry, 0)));
    assert_eq!(d.stream(CAM).unwrap().epoch, expiry);
    assert_eq!(d.stream(CAM).unwrap().producer, None);
    // Its node ID is cooling down.
    let mut req = request(3, CAM, PRODUCER);
    req.desired_node_id = producer.node_id;
    assert_refused(
        &attach_req(&mut d, &req, expiry).1,
        ResponseCode::Rejected,
        "desired node_id unavailable",
    );

    // A consumer's expiry is a revoke only: no new epoch.
    let creates = d.backend().created_epochs(CAM).len();
    d.tick(T0 + 7 * S);
    let actions = peer_actions(&mut d);
    let revoked = revokes(&actions);
    assert_eq!(revoked.len(), 1);
    assert_eq!((revoked[0].client_id, revoked[0].role), (1, Role::Consumer));
    assert_eq!(d.backend().created_epochs(CAM).len(), creates);
    assert_eq!(d.lease_count(), 0);
}

#[test]
fn c46_keepalive_with_any_field_wrong_does_not_extend() {
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    let good = keepalive_of(&r, 1, PRODUCER);
    let wrong = [
        Keepalive { client_id: 2, ..good.clone() },
        Keepalive { stream_id: AUX, ..good.clone() },
        Keepalive { role: CONSUMER, ..good.clone() },
        Keepalive { role: 9, ..good.clone() },
        Keepalive { lease_id: good.lease_id + 1, ..good.clone() },
    ];
    for k in &wrong {
        assert!(!d.keepalive(key(1), k, T0 + 2 * S), "{k:?}");
    }
    assert_eq!(d.stream(CAM).unwrap().producer.unwrap().expiry_ns, T0 + 3 * S);
    assert!(peer_actions(&mut d).is_empty(), "keepalives are never answered");
    d.tick(T0 + 3 * S);
    assert_eq!(revokes(&peer_actions(&mut d)).len(), 1);

    // The right keepalive extends to now + interval x grace.
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    assert!(d.keepalive(key(1), &keepalive_of(&r, 1, PRODUCER), T0 + 2 * S));
    assert_eq!(d.stream(CAM).unwrap().producer.unwrap().expiry_ns, T0 + 5 * S);
    d.tick(T0 + 3 * S);
    assert!(revokes(&peer_actions(&mut d)).is_empty());
    assert_eq!(d.poll_timeout(), Some(T0 + 4 * S), "next: the announce, before the expiry");
    // At or past the deadline a keepalive revives nothing.
    assert!(!d.keepalive(key(1), &keepalive_of(&r, 1, PRODUCER), T0 + 5 * S));
    d.tick(T0 + 5 * S);
    assert_eq!(revokes(&peer_actions(&mut d)).len(), 1);
}

#[test]
fn c47_detach_ok_with_revoke_detached_and_producer_epoch_bump() {
    let mut d = driver();
    let consumer = attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    let producer = attach_ok(&mut d, 2, CAM, PRODUCER, T0 + S);

    // Unknown lease, or any field not matching.
    let good = detach_of(&producer, 2, PRODUCER);
    for bad in [
        DetachRequest { lease_id: 12345, ..good.clone() },
        DetachRequest { client_id: 1, ..good.clone() },
        DetachRequest { stream_id: AUX, ..good.clone() },
        DetachRequest { role: CONSUMER, ..good.clone() },
    ] {
        let (actions, r) = detach(&mut d, &bad, T0 + S);
        assert_eq!((r.code, r.error_message.as_str()), (ResponseCode::Rejected, "lease not found"));
        assert_eq!(r.correlation_id, 99);
        assert_eq!(actions.len(), 1, "nothing but the response");
    }
    let (_, r) = detach(&mut d, &DetachRequest { role: 0, ..good.clone() }, T0 + S);
    assert_eq!((r.code, r.error_message.as_str()), (ResponseCode::InvalidParams, "invalid role"));
    assert_eq!(d.lease_count(), 2);

    // The producer detaches: revoke(DETACHED), new epoch announced, then OK. Not T7.
    let now = T0 + 2 * S;
    let (actions, r) = detach(&mut d, &good, now);
    assert_eq!((r.code, r.error_message.as_str(), r.correlation_id), (ResponseCode::Ok, "", 99));
    assert_eq!(actions.len(), 3);
    assert!(is_revoke(&actions[0]) && is_announce(&actions[1]) && is_reply(&actions[2]));
    let revoked = revokes(&actions)[0];
    assert_eq!(
        (revoked.reason, revoked.role, revoked.client_id),
        (RevokeReason::Detached, Role::Producer, 2)
    );
    assert_eq!(revoked.error_message, "lease detached");
    let announce = announces(&actions)[0];
    assert!(announce.epoch > producer.epoch.unwrap());
    assert_eq!(announce.producer_id, 0);

    // Detach is best effort: the same request again finds nothing.
    let (_, r) = detach(&mut d, &good, now);
    assert_eq!(r.code, ResponseCode::Rejected);

    // A consumer detach: revoke and OK, no new epoch.
    let creates = d.backend().created_epochs(CAM).len();
    let (actions, r) = detach(&mut d, &detach_of(&consumer, 1, CONSUMER), now);
    assert_eq!(r.code, ResponseCode::Ok);
    assert!(is_revoke(&actions[0]) && is_reply(&actions[1]) && actions.len() == 2);
    assert_eq!(d.backend().created_epochs(CAM).len(), creates);
    assert_eq!(d.lease_count(), 0);
}

#[test]
fn c48_hugepages_policy() {
    let huge = HugepagesPolicy::Hugepages.to_wire();
    let standard = HugepagesPolicy::Standard.to_wire();
    let with = |client: u32, policy: u8| AttachRequest {
        require_hugepages: policy,
        ..request(client, CAM, PRODUCER)
    };

    // Base on tmpfs.
    let mut d = driver();
    assert_refused(
        &attach_req(&mut d, &with(1, huge), T0).1,
        ResponseCode::Rejected,
        "hugepages not available",
    );
    assert_refused(
        &attach_req(&mut d, &with(1, 7), T0).1,
        ResponseCode::InvalidParams,
        "invalid hugepages policy",
    );
    let (_, r) = attach_req(&mut d, &with(1, standard), T0);
    assert_eq!(r.code, ResponseCode::Ok);
    assert!(r.header_region_uri.ends_with("require_hugepages=false"));

    // Base on hugetlbfs.
    let mut d =
        driver_with(&config_with(""), FakeBackend { hugetlbfs: true, ..FakeBackend::default() });
    assert_refused(
        &attach_req(&mut d, &with(1, standard), T0).1,
        ResponseCode::Rejected,
        "standard pages requested",
    );
    let (_, r) = attach_req(&mut d, &with(1, huge), T0);
    assert_eq!(r.code, ResponseCode::Ok);
    assert!(r.header_region_uri.ends_with("require_hugepages=true"));
    assert!(r.payload_pools.iter().all(|p| p.region_uri.ends_with("require_hugepages=true")));

    // UNSPECIFIED follows shm.require_hugepages.
    let mut config = config_with("");
    config.shm.require_hugepages = true;
    let mut d = driver_with(&config, FakeBackend::default());
    let (_, r) = attach_req(&mut d, &with(1, HugepagesPolicy::Unspecified.to_wire()), T0);
    assert_refused(&r, ResponseCode::Rejected, "hugepages not available");
}

#[test]
fn c49_desired_node_id_in_use_or_cooling_rejected_and_auto_ids_unique() {
    let mut d = driver();
    let mut req = request(1, CAM, CONSUMER);
    req.desired_node_id = Some(77);
    let (_, r) = attach_req(&mut d, &req, T0);
    assert_eq!(r.node_id, Some(77));

    let mut req2 = request(2, CAM, CONSUMER);
    req2.desired_node_id = Some(77);
    let (_, r2) = attach_req(&mut d, &req2, T0);
    assert_refused(&r2, ResponseCode::Rejected, "desired node_id unavailable");

    // Released: cooling down for node_id_reuse_cooldown_ms.
    detach(&mut d, &detach_of(&r, 1, CONSUMER), T0 + S);
    assert_refused(
        &attach_req(&mut d, &req2, T0 + S).1,
        ResponseCode::Rejected,
        "desired node_id unavailable",
    );

    // 0 is a real request (T15); 0xFFFFFFFF means "any".
    let mut req3 = request(3, CAM, CONSUMER);
    req3.desired_node_id = Some(0);
    assert_eq!(attach_req(&mut d, &req3, T0 + S).1.node_id, Some(0));
    let mut req4 = request(4, CAM, CONSUMER);
    req4.desired_node_id = Some(NULL_U32);
    let r4 = attach_req(&mut d, &req4, T0 + S).1;
    assert!(r4.node_id.is_some_and(|n| n != 0 && n != NULL_U32 && n != 77));

    // Automatic IDs: non-zero, non-null, unique among 200 live leases.
    let mut d = driver();
    let mut seen = HashSet::new();
    for client in 1..=200 {
        let node = attach_ok(&mut d, client, CAM, CONSUMER, T0).node_id.unwrap();
        assert!(node != 0 && node != NULL_U32);
        assert!(seen.insert(node), "node id {node} handed out twice");
    }
}

#[test]
fn c50_dynamic_stream_zero_takes_ids_round_robin_and_exhausts() {
    let mut d = driver();
    // An explicit dynamic ID inside the range is skipped by the allocator.
    assert_eq!(attach_ok(&mut d, 1, 20001, PRODUCER, T0).stream_id, Some(20001));
    assert_eq!(attach_ok(&mut d, 2, 0, PRODUCER, T0).stream_id, Some(20000));
    assert_eq!(attach_ok(&mut d, 3, 0, CONSUMER, T0).stream_id, Some(20002));
    let r = attach(&mut d, 4, 0, PRODUCER, T0);
    assert_refused(&r, ResponseCode::InvalidParams, "no stream ids available");
    assert_eq!(d.stream_status().iter().filter(|s| s.dynamic).count(), 3);
}

#[test]
fn c51_epochs_rise_across_a_driver_restart() {
    let mut first = driver();
    let r = attach_ok(&mut first, 1, CAM, PRODUCER, T0 + 100 * S);
    let old_epoch = r.epoch.unwrap();
    let disk = first.backend().disk.clone();

    // The new driver's clock reads less than the old epoch (fake clock; or epochs bumped past
    // now by +1 steps). The backend reports what is on disk.
    let backend = FakeBackend { disk, ..FakeBackend::default() };
    let mut second = driver_with(&config_with(""), backend);
    let r = attach_ok(&mut second, 1, CAM, CONSUMER, T0);
    assert_eq!(r.epoch, Some(old_epoch + 1));
    // And a stream with nothing on disk starts at now.
    assert_eq!(attach_ok(&mut second, 2, AUX, CONSUMER, T0).epoch, Some(T0));
}

#[test]
fn c52_periodic_announces_and_shutdown() {
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    // No announce for a stream with epoch 0 (AUX).
    for step in 1..=3 {
        d.keepalive(key(1), &keepalive_of(&r, 1, PRODUCER), T0 + step * S);
        d.tick(T0 + step * S);
        let actions = peer_actions(&mut d);
        let a = announces(&actions);
        assert_eq!(a.len(), 1, "step {step}");
        assert_eq!((a[0].stream_id, a[0].epoch, a[0].producer_id), (CAM, T0, 1));
        assert_eq!(a[0].announce_timestamp_ns, T0 + step * S);
    }

    d.shutdown(T0 + 4 * S);
    let actions = peer_actions(&mut d);
    assert_eq!(
        actions,
        vec![Action::Broadcast(Notice::DriverShutdown(DriverShutdown {
            timestamp_ns: T0 + 4 * S,
            reason: ShutdownReason::Normal,
            error_message: String::new(),
        }))]
    );
}

#[test]
fn c53_epoch_gc_runs_on_every_new_epoch_and_keeps_current_plus_one() {
    let mut d = driver();
    let mut epochs = Vec::new();
    for i in 0..4u64 {
        let now = T0 + i * 10 * S;
        let r = attach_ok(&mut d, 1, CAM, PRODUCER, now);
        epochs.push(r.epoch.unwrap());
        detach(&mut d, &detach_of(&r, 1, PRODUCER), now + S);
        epochs.push(d.stream(CAM).unwrap().epoch);
    }
    let gc_calls: Vec<(u64, GcPolicy)> = d
        .backend()
        .calls
        .iter()
        .filter_map(|c| match c {
            BackendCall::Gc { stream_id: CAM, current_epoch, policy, .. } => {
                Some((*current_epoch, *policy))
            }
            _ => None,
        })
        .collect();
    // One GC per new epoch, after its creation, with the configured policy (keep 2, 3 s).
    assert_eq!(gc_calls.iter().map(|c| c.0).collect::<Vec<_>>(), epochs);
    assert!(gc_calls.iter().all(|c| c.1 == GcPolicy { keep: 2, min_age_ns: 3 * S }));
    // The fake applies the policy: the current epoch and one more survive.
    let on_disk: Vec<u64> = d.backend().disk[&CAM].iter().copied().collect();
    assert_eq!(on_disk, epochs[epochs.len() - 2..].to_vec());

    // Off: no GC calls.
    let mut config = config_with("");
    config.policies.epoch_gc_enabled = false;
    let mut d = driver_with(&config, FakeBackend::default());
    attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    assert!(!d.backend().calls.iter().any(|c| matches!(c, BackendCall::Gc { .. })));

    // On startup, when asked: every static stream, no current epoch.
    let mut config = config_with("");
    config.policies.epoch_gc_on_startup = true;
    let d = driver_with(&config, FakeBackend::default());
    let startup: Vec<(u32, u64)> = d
        .backend()
        .calls
        .iter()
        .filter_map(|c| match c {
            BackendCall::Gc { stream_id, current_epoch, .. } => Some((*stream_id, *current_epoch)),
            _ => None,
        })
        .collect();
    assert_eq!(startup, vec![(CAM, 0), (AUX, 0)]);
}

#[test]
fn revoke_precedes_announce_on_expiry_detach_and_admin_revoke() {
    for how in ["expiry", "detach", "revoke"] {
        let mut d = driver();
        let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
        let now = T0 + 3 * S;
        match how {
            "expiry" => d.tick(now),
            "detach" => d.detach(key(1), &detach_of(&r, 1, PRODUCER), now),
            _ => assert!(d.revoke(r.lease_id.unwrap(), "operator", now)),
        }
        let actions = peer_actions(&mut d);
        let revoke = position(&actions, is_revoke);
        let announce = position(
            &actions,
            |a| matches!(a, Action::Broadcast(Notice::Announce(x)) if x.epoch > r.epoch.unwrap()),
        );
        assert!(revoke < announce, "{how}: {actions:?}");
        let expected = match how {
            "expiry" => RevokeReason::Expired,
            "detach" => RevokeReason::Detached,
            _ => RevokeReason::Revoked,
        };
        assert_eq!(revokes(&actions)[0].reason, expected);
    }
    let mut d = driver();
    assert!(!d.revoke(12345, "no such lease", T0));
}

#[test]
fn lease_ids_never_zero_never_repeat() {
    let mut d = driver();
    let mut seen = HashSet::new();
    for i in 0..500u32 {
        let now = T0 + u64::from(i) * 2 * S; // past every cooldown
        let r =
            attach_ok(&mut d, 1 + i % 3, CAM, if i % 2 == 0 { PRODUCER } else { CONSUMER }, now);
        let id = r.lease_id.unwrap();
        assert_ne!(id, 0);
        assert!(seen.insert(id), "lease id {id} reused");
        detach(
            &mut d,
            &detach_of(&r, 1 + i % 3, if i % 2 == 0 { PRODUCER } else { CONSUMER }),
            now,
        );
    }
    // Lease ids come from the backend's entropy: another source, other ids.
    let backend = FakeBackend { entropy_state: 8, ..FakeBackend::default() };
    let mut other = Driver::new(&config_with(""), backend, 8, T0).unwrap();
    let a = attach_ok(&mut other, 1, CAM, CONSUMER, T0).lease_id.unwrap();
    assert!(!seen.contains(&a));
}

#[test]
fn node_id_cooldown_ends_after_the_configured_time() {
    let mut d = driver();
    let mut req = request(1, CAM, CONSUMER);
    req.desired_node_id = Some(5);
    let r = attach_req(&mut d, &req, T0).1;
    detach(&mut d, &detach_of(&r, 1, CONSUMER), T0 + S);
    let mut again = request(2, CAM, CONSUMER);
    again.desired_node_id = Some(5);
    assert_refused(
        &attach_req(&mut d, &again, T0 + 2 * S - 1).1,
        ResponseCode::Rejected,
        "desired node_id unavailable",
    );
    assert_eq!(attach_req(&mut d, &again, T0 + 2 * S).1.node_id, Some(5));

    // Cooldown 0: reusable at once.
    let mut d = driver_with(&config_with("node_id_reuse_cooldown_ms = 0"), FakeBackend::default());
    let r = attach_req(&mut d, &req, T0).1;
    detach(&mut d, &detach_of(&r, 1, CONSUMER), T0 + S);
    assert_eq!(attach_req(&mut d, &again, T0 + S).1.node_id, Some(5));
}

#[test]
fn too_many_leases_and_too_many_cooling_node_ids() {
    let limits = DriverLimits { max_leases: 3, max_node_id_cooldowns: 2, max_dynamic_streams: 1 };
    let mut d =
        Driver::with_limits(&config_with(""), FakeBackend::default(), 7, T0, limits).unwrap();
    let leases: Vec<AttachResponse> =
        (1..=3).map(|c| attach_ok(&mut d, c, CAM, CONSUMER, T0)).collect();
    assert_refused(
        &attach(&mut d, 4, CAM, CONSUMER, T0),
        ResponseCode::Rejected,
        "too many leases",
    );
    // Three released node IDs cool down: leases + cooling = 0 + 3 < 5, so one more attach works.
    for (i, r) in leases.iter().enumerate() {
        detach(&mut d, &detach_of(r, i as u32 + 1, CONSUMER), T0);
    }
    attach_ok(&mut d, 4, CAM, CONSUMER, T0);
    attach_ok(&mut d, 5, CAM, CONSUMER, T0);
    assert_refused(
        &attach(&mut d, 6, CAM, CONSUMER, T0),
        ResponseCode::Rejected,
        "too many node ids cooling down",
    );
    // When the cooldowns end, there is room again.
    attach_ok(&mut d, 6, CAM, CONSUMER, T0 + S);
    assert_eq!(d.lease_count(), 3);
}

#[test]
fn too_many_dynamic_streams() {
    let limits = DriverLimits { max_dynamic_streams: 2, ..DriverLimits::default() };
    let mut d =
        Driver::with_limits(&config_with(""), FakeBackend::default(), 7, T0, limits).unwrap();
    attach_ok(&mut d, 1, 0, CONSUMER, T0);
    attach_ok(&mut d, 2, 555, CONSUMER, T0);
    assert_refused(&attach(&mut d, 3, 0, CONSUMER, T0), ResponseCode::Rejected, "too many streams");
    assert_refused(
        &attach(&mut d, 3, 556, CONSUMER, T0),
        ResponseCode::Rejected,
        "too many streams",
    );
    // Existing streams still take leases.
    attach_ok(&mut d, 3, 555, PRODUCER, T0);
}

#[test]
fn announce_cadence_is_one_per_stream_per_period() {
    let mut d = driver();
    let cam = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    // AUX gets its epoch 300 ms later: its own phase.
    let aux = attach_ok(&mut d, 2, AUX, CONSUMER, T0 + 300 * MS);
    d.drain_actions().for_each(drop);
    let mut count = std::collections::HashMap::new();
    let mut times = Vec::new();
    let mut now = T0;
    // Ten periods in 1 ms steps, keepalives every 500 ms.
    while now < T0 + 10 * S {
        now += MS;
        if (now - T0).is_multiple_of(500 * MS) {
            assert!(d.keepalive(key(1), &keepalive_of(&cam, 1, PRODUCER), now));
            assert!(d.keepalive(key(2), &keepalive_of(&aux, 2, CONSUMER), now));
        }
        d.tick(now);
        for a in announces(&peer_actions(&mut d)) {
            *count.entry(a.stream_id).or_insert(0) += 1;
            times.push((a.stream_id, a.announce_timestamp_ns - T0));
        }
    }
    assert_eq!(count.get(&CAM), Some(&10), "{times:?}");
    // AUX's 10th period ends at 10.3 s, after the loop.
    assert_eq!(count.get(&AUX), Some(&9), "{times:?}");
    assert!(times.contains(&(CAM, S)) && times.contains(&(AUX, 1300 * MS)));

    // A tick 2.5 periods late (before the leases expire) announces once, not once per missed
    // period.
    d.tick(now + 2500 * MS);
    let actions = peer_actions(&mut d);
    assert_eq!(announces(&actions).iter().filter(|a| a.stream_id == CAM).count(), 1);
}

#[test]
fn announce_on_change_resets_the_period() {
    let mut d = driver();
    attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    // A second attach 600 ms later announces (on change) and moves the next periodic one.
    attach_ok(&mut d, 2, CAM, CONSUMER, T0 + 600 * MS);
    assert_eq!(d.poll_timeout(), Some(T0 + 1600 * MS));
    d.tick(T0 + S);
    assert!(announces(&peer_actions(&mut d)).is_empty());
}

#[test]
fn shutdown_ends_every_lease_and_refuses_new_ones() {
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    attach_ok(&mut d, 2, CAM, CONSUMER, T0);
    d.shutdown(T0 + S);
    let actions = peer_actions(&mut d);
    assert!(matches!(
        actions.as_slice(),
        [Action::Broadcast(Notice::DriverShutdown(DriverShutdown {
            reason: ShutdownReason::Normal,
            ..
        }))]
    ));
    assert!(revokes(&actions).is_empty(), "shutdown invalidates all leases at once, no revokes");
    assert_eq!(d.lease_count(), 0);
    assert!(d.is_shut_down());
    assert_eq!(d.stream(CAM).unwrap().producer, None);
    assert_eq!(d.stream(CAM).unwrap().consumers, 0);
    assert_eq!(d.poll_timeout(), None);
    assert!(!d.keepalive(key(1), &keepalive_of(&r, 1, PRODUCER), T0 + S));
    d.tick(T0 + 10 * S);
    assert!(peer_actions(&mut d).is_empty());
    assert_refused(
        &attach(&mut d, 3, CAM, CONSUMER, T0 + 2 * S),
        ResponseCode::Rejected,
        "driver shut down",
    );
    // Once only.
    d.shutdown(T0 + 3 * S);
    assert!(peer_actions(&mut d).is_empty());
}

#[test]
fn shm_creation_failure_is_internal_error_with_nothing_leased() {
    let mut d = driver();
    let consumer = attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    d.backend_mut().fail_creates = Some("disk full".into());
    let r = attach(&mut d, 2, CAM, PRODUCER, T0 + S);
    assert_refused(&r, ResponseCode::InternalError, "shm creation failed: disk full");
    assert_eq!(d.lease_count(), 1);
    assert_eq!(d.stream(CAM).unwrap().epoch, consumer.epoch.unwrap(), "epoch unchanged");
    assert_eq!(d.stream(CAM).unwrap().producer, None);
    // A dynamic stream whose creation failed does not linger.
    let r = attach(&mut d, 3, 0, PRODUCER, T0 + S);
    assert_eq!(r.code, ResponseCode::InternalError);
    assert!(d.stream_status().iter().all(|s| !s.dynamic));
    // The client IDs are free for a retry once the backend recovers.
    d.backend_mut().fail_creates = None;
    attach_ok(&mut d, 2, CAM, PRODUCER, T0 + 2 * S);
    assert_eq!(attach_ok(&mut d, 3, 0, PRODUCER, T0 + 2 * S).stream_id, Some(20001));
}

#[test]
fn producer_end_with_failing_backend_keeps_the_old_epoch_and_logs() {
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    d.backend_mut().fail_creates = Some("enospc".into());
    d.detach(key(1), &detach_of(&r, 1, PRODUCER), T0 + S);
    let events = d.drain_actions().collect::<Vec<_>>();
    assert!(events.iter().any(is_revoke));
    assert!(!events.iter().any(is_announce), "no announce of an epoch without files");
    assert!(events.iter().any(|a| matches!(
        a,
        Action::Log(DriverEvent::EpochCreateFailed { stream_id: CAM, error, .. }) if error == "enospc"
    )));
    assert_eq!(d.stream(CAM).unwrap().epoch, T0);
}

#[test]
fn consumer_attach_creates_an_epoch_only_for_a_stream_without_one() {
    let mut d = driver();
    attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    attach_ok(&mut d, 2, CAM, CONSUMER, T0 + S);
    assert_eq!(d.backend().created_epochs(CAM), vec![T0]);
    // Each attach is announced, even without a new epoch.
    let (actions, _) = attach_req(&mut d, &request(3, CAM, CONSUMER), T0 + 2 * S);
    assert!(position(&actions, is_announce) < position(&actions, is_reply));
}

#[test]
fn attach_checks_run_in_the_spec_order() {
    let mut d = driver();
    attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    // Each request breaks two rules; the earlier one in §5.3 answers.
    let cases: [(AttachRequest, ResponseCode, &str); 6] = [
        (
            AttachRequest { role: 0, client_id: 0, ..request(2, CAM, CONSUMER) },
            ResponseCode::InvalidParams,
            "invalid role",
        ),
        (
            AttachRequest { client_id: 0, expected_layout_version: 9, ..request(2, CAM, CONSUMER) },
            ResponseCode::InvalidParams,
            "client_id must be non-zero",
        ),
        (
            AttachRequest { expected_layout_version: 9, ..request(1, CAM, CONSUMER) },
            ResponseCode::Rejected,
            "client_id already attached",
        ),
        (
            AttachRequest {
                expected_layout_version: 9,
                stream_id: 777,
                publish_mode: Some(1),
                ..request(2, 777, CONSUMER)
            },
            ResponseCode::Rejected,
            "layout version mismatch",
        ),
        (
            AttachRequest {
                require_hugepages: 7,
                publish_mode: Some(1),
                ..request(2, 777, PRODUCER)
            },
            ResponseCode::Rejected,
            "stream not provisioned",
        ),
        (
            AttachRequest { require_hugepages: 7, ..request(2, CAM, PRODUCER) },
            ResponseCode::Rejected,
            "producer already attached",
        ),
    ];
    for (req, code, message) in cases {
        let (_, r) = attach_req(&mut d, &req, T0);
        assert_refused(&r, code, message);
    }
    let mut req = request(2, AUX, CONSUMER);
    req.require_hugepages = 7;
    req.desired_node_id = Some(d.stream(CAM).unwrap().producer.unwrap().node_id);
    assert_refused(
        &attach_req(&mut d, &req, T0).1,
        ResponseCode::InvalidParams,
        "invalid hugepages policy",
    );
}

#[test]
fn poll_timeout_is_the_earliest_expiry_or_announce() {
    let mut d = driver();
    assert_eq!(d.poll_timeout(), None);
    attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    assert_eq!(d.poll_timeout(), Some(T0 + S)); // announce before the 3 s expiry
    let mut d = driver_with(&config_with("announce_period_ms = 10000"), FakeBackend::default());
    attach_ok(&mut d, 1, CAM, CONSUMER, T0);
    assert_eq!(d.poll_timeout(), Some(T0 + 3 * S)); // expiry first
}

#[test]
fn closed_connection_keeps_its_lease_until_expiry() {
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    d.client_gone(key(1));
    assert!(!d.stream(CAM).unwrap().producer.unwrap().connected);
    assert_eq!(d.lease_count(), 1);
    // A keepalive from a new connection keeps it and records the new connection.
    assert!(d.keepalive(ClientKey(9), &keepalive_of(&r, 1, PRODUCER), T0 + S));
    assert!(d.stream(CAM).unwrap().producer.unwrap().connected);
    d.client_gone(ClientKey(9));
    d.tick(T0 + 4 * S);
    assert_eq!(revokes(&peer_actions(&mut d)).len(), 1);
    assert_eq!(d.lease_count(), 0);
}

#[test]
fn status_reports_streams_and_producer_leases() {
    let mut d = driver();
    let r = attach_ok(&mut d, 1, CAM, PRODUCER, T0);
    attach_ok(&mut d, 2, CAM, CONSUMER, T0);
    attach_ok(&mut d, 3, 0, CONSUMER, T0);
    let status = d.stream_status();
    assert_eq!(status.iter().map(|s| s.stream_id).collect::<Vec<_>>(), vec![CAM, AUX, 20000]);
    let cam = &status[0];
    assert_eq!(
        (cam.profile.as_str(), cam.dynamic, cam.epoch, cam.consumers),
        ("camera", false, T0, 1)
    );
    let producer = cam.producer.unwrap();
    assert_eq!(producer.lease_id, r.lease_id.unwrap());
    assert_eq!((producer.client_id, Some(producer.node_id)), (1, r.node_id));
    assert_eq!(producer.expiry_ns, T0 + 3 * S);
    assert_eq!((status[1].epoch, status[1].consumers), (0, 0));
    assert!(status[2].dynamic);
    // Logs name what happened.
    let mut d = driver();
    attach_ok(&mut d, 1, 0, PRODUCER, T0);
    d.attach(key(2), &request(2, 0, PRODUCER), T0);
    let events = logs(&mut d);
    assert!(
        events.contains(&DriverEvent::StreamCreated { stream_id: 20001, profile: "small".into() })
    );
    assert!(events.contains(&DriverEvent::EpochChanged { stream_id: 20001, epoch: T0 }));
}

#[test]
fn enums_decode_only_spec_values() {
    assert_eq!(Role::from_wire(1), Some(Role::Producer));
    assert_eq!(Role::from_wire(2), Some(Role::Consumer));
    for v in [0u8, 3, 255] {
        assert_eq!(Role::from_wire(v), None);
    }
    assert_eq!(PublishMode::from_wire(2), Some(PublishMode::ExistingOrCreate));
    assert_eq!(PublishMode::from_wire(0), None);
    assert_eq!(HugepagesPolicy::from_wire(0), Some(HugepagesPolicy::Unspecified));
    assert_eq!(HugepagesPolicy::from_wire(7), None);
    assert_eq!(RevokeReason::from_wire(3), Some(RevokeReason::Revoked));
    assert_eq!(RevokeReason::from_wire(0), None);
    assert_eq!(ShutdownReason::from_wire(0), Some(ShutdownReason::Normal));
    assert_eq!(ShutdownReason::from_wire(3), None);
    assert_eq!(ResponseCode::from_wire(4), Some(ResponseCode::InternalError));
    assert_eq!(ResponseCode::from_wire(-1), None);
    assert_eq!(ClockDomain::from_wire(1), Some(ClockDomain::Monotonic));
    assert_eq!(Mode::from_wire(2), Some(Mode::RateLimited));
    assert_eq!(Mode::from_wire(3), None);
    let err = Role::try_from(9u8).unwrap_err();
    assert_eq!(err.to_string(), "invalid role: expected one of 1 (PRODUCER), 2 (CONSUMER), got 9");
    assert_eq!(ResponseCode::InvalidParams.to_wire(), 2);
}

#[test]
fn random_node_ids_skip_ids_in_use_or_cooling() {
    // Drivers with one seed draw the same node IDs: learn the first one, then make it busy.
    let first = attach_ok(&mut driver(), 1, CAM, CONSUMER, T0).node_id.unwrap();

    // In use (asked for explicitly, which draws nothing).
    let mut d = driver();
    let mut req = request(1, CAM, CONSUMER);
    req.desired_node_id = Some(first);
    assert_eq!(attach_req(&mut d, &req, T0).1.node_id, Some(first));
    let auto = attach_ok(&mut d, 2, CAM, CONSUMER, T0).node_id.unwrap();
    assert_ne!(auto, first);

    // Cooling down.
    let mut d = driver();
    let r = attach_req(&mut d, &req, T0).1;
    detach(&mut d, &detach_of(&r, 1, CONSUMER), T0);
    let auto = attach_ok(&mut d, 2, CAM, CONSUMER, T0).node_id.unwrap();
    assert_ne!(auto, first);
    // After the cooldown the same draw is allowed again.
    let mut d = driver();
    let r = attach_req(&mut d, &req, T0).1;
    detach(&mut d, &detach_of(&r, 1, CONSUMER), T0);
    assert_eq!(attach_ok(&mut d, 2, CAM, CONSUMER, T0 + S).node_id, Some(first));
}
