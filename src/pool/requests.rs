//! The pool's control requests as the daemon decodes them: protobuf bodies from any client,
//! turned into the driver's messages. One function, [`decode_request`], used by the pool
//! agent and by the fuzz target `pool_requests` (which feeds its output to a driver).

use prost::Message;

use super::driver;
use super::proto;
use super::{
    MSG_POOL_ATTACH, MSG_POOL_DETACH, MSG_POOL_HELLO, MSG_POOL_KEEPALIVE, MSG_POOL_QOS,
    MSG_POOL_STATUS, MSG_POOL_SUBSCRIBE,
};

/// A decoded pool request.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolRequest {
    /// ShmAttachRequest.
    Attach(driver::AttachRequest),
    /// ShmLeaseKeepalive.
    Keepalive(driver::Keepalive),
    /// ShmDetachRequest.
    Detach(driver::DetachRequest),
    /// Subscribe to the driver's events.
    Subscribe,
    /// ConsumerHello.
    Hello(driver::ConsumerHello),
    /// A QoS report.
    Qos(QosReport),
    /// `pool status`.
    Status,
}

/// A QoS report, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum QosReport {
    /// QosConsumer.
    Consumer(driver::QosConsumer),
    /// QosProducer: the stream, its producer, its epoch and the producer's next seq.
    Producer {
        /// `streamId`.
        stream_id: u32,
        /// `producerId` (the producer's client id).
        producer_id: u32,
        /// `epoch`.
        epoch: u64,
        /// `currentSeq`.
        current_seq: u64,
    },
    /// Neither (an empty report).
    Empty,
}

/// Why a request body was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The body is not the request's protobuf message.
    #[error("bad request body: {0}")]
    Body(#[from] prost::DecodeError),
    /// Not a pool `msg_type`.
    #[error("not a pool request: msg_type {0}")]
    Type(u16),
}

/// A u32 enum value as the driver's u8: a value that does not fit is no valid enum value;
/// 254 is none of the spec's values and not its u8 null (255), so the driver refuses it as
/// invalid instead of reading it as "absent".
fn enum_u8(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(254)
}

/// Decodes the body of a request of `msg_type`. The spec's null values written explicitly
/// (publish mode 255, desired node id 0xFFFFFFFF) read as absent.
pub fn decode_request(msg_type: u16, body: &[u8]) -> Result<PoolRequest, RequestError> {
    Ok(match msg_type {
        MSG_POOL_ATTACH => {
            let r = proto::AttachRequest::decode(body)?;
            PoolRequest::Attach(driver::AttachRequest {
                correlation_id: r.correlation_id,
                stream_id: r.stream_id,
                client_id: r.client_id,
                role: enum_u8(r.role),
                expected_layout_version: r.expected_layout_version,
                publish_mode: r.publish_mode.map(enum_u8).filter(|&m| m != u8::MAX),
                require_hugepages: enum_u8(r.require_hugepages),
                desired_node_id: r.desired_node_id.filter(|&n| n != u32::MAX),
            })
        }
        MSG_POOL_KEEPALIVE => {
            let k = proto::LeaseKeepalive::decode(body)?;
            PoolRequest::Keepalive(driver::Keepalive {
                lease_id: k.lease_id,
                stream_id: k.stream_id,
                client_id: k.client_id,
                role: enum_u8(k.role),
                client_timestamp_ns: k.client_timestamp_ns,
            })
        }
        MSG_POOL_DETACH => {
            let r = proto::DetachRequest::decode(body)?;
            PoolRequest::Detach(driver::DetachRequest {
                correlation_id: r.correlation_id,
                lease_id: r.lease_id,
                stream_id: r.stream_id,
                client_id: r.client_id,
                role: enum_u8(r.role),
            })
        }
        MSG_POOL_SUBSCRIBE => {
            proto::Subscribe::decode(body)?;
            PoolRequest::Subscribe
        }
        MSG_POOL_HELLO => {
            let h = proto::ConsumerHello::decode(body)?;
            PoolRequest::Hello(driver::ConsumerHello {
                stream_id: h.stream_id,
                consumer_id: h.consumer_id,
                supports_shm: h.supports_shm,
                supports_progress: h.supports_progress,
                mode: enum_u8(h.mode),
                max_rate_hz: h.max_rate_hz,
                expected_layout_version: h.expected_layout_version,
                progress_interval_us: h.progress_interval_us,
                progress_bytes_delta: h.progress_bytes_delta,
                progress_major_delta_units: h.progress_major_delta_units,
                descriptor_stream_id: h.descriptor_stream_id,
                control_stream_id: h.control_stream_id,
                descriptor_channel: h.descriptor_channel,
                control_channel: h.control_channel,
            })
        }
        MSG_POOL_QOS => {
            let q = proto::QosReport::decode(body)?;
            PoolRequest::Qos(match q.report {
                Some(proto::qos_report::Report::Consumer(c)) => {
                    QosReport::Consumer(driver::QosConsumer {
                        stream_id: c.stream_id,
                        consumer_id: c.consumer_id,
                        epoch: c.epoch,
                        last_seq_seen: c.last_seq_seen,
                        drops_gap: c.drops_gap,
                        drops_late: c.drops_late,
                        mode: enum_u8(c.mode),
                    })
                }
                Some(proto::qos_report::Report::Producer(p)) => QosReport::Producer {
                    stream_id: p.stream_id,
                    producer_id: p.producer_id,
                    epoch: p.epoch,
                    current_seq: p.current_seq,
                },
                None => QosReport::Empty,
            })
        }
        MSG_POOL_STATUS => {
            proto::PoolStatusRequest::decode(body)?;
            PoolRequest::Status
        }
        other => return Err(RequestError::Type(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_and_out_of_range_enums() {
        let body = proto::AttachRequest {
            correlation_id: 1,
            stream_id: 2,
            client_id: 3,
            role: 300,
            expected_layout_version: 0,
            publish_mode: Some(255),
            require_hugepages: 7,
            desired_node_id: Some(u32::MAX),
        }
        .encode_to_vec();
        let PoolRequest::Attach(a) = decode_request(MSG_POOL_ATTACH, &body).unwrap() else {
            panic!("an attach")
        };
        assert_eq!((a.role, a.publish_mode, a.require_hugepages), (254, None, 7));
        assert_eq!(a.desired_node_id, None, "0xFFFFFFFF is the spec's null");
        let body = proto::AttachRequest { desired_node_id: Some(0), ..Default::default() };
        let PoolRequest::Attach(a) =
            decode_request(MSG_POOL_ATTACH, &body.encode_to_vec()).unwrap()
        else {
            panic!("an attach")
        };
        assert_eq!(a.desired_node_id, Some(0), "node 0 is a real request (trap T15)");
        assert!(decode_request(MSG_POOL_ATTACH, &[0xff, 0xff]).is_err());
        assert!(matches!(decode_request(99, &[]), Err(RequestError::Type(99))));
    }
}
