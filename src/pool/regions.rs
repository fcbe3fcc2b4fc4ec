//! Mapping a grant's regions after full URI validation (spec §4): the producer read-write,
//! consumers read-only, the `corelane.wake` sidecar read-write for both.

use std::sync::Arc;

use super::link::{Grant, PoolOptions};
use super::uri::{open_region, Access, Allowlist, PermissionPolicy, ShmUri};
use super::PoolError;
use crate::mapping::{Mapping, ReadOnlyMapping, SizePolicy};
use crate::rings::seqlock::{PoolSpec, Stream, StreamSpec, WakeRegion, WAKE_FILE_BYTES};
use crate::rings::shm;

/// The checks a client applies to every URI it maps.
#[derive(Debug)]
pub struct MapPolicy {
    allowlist: Allowlist,
    permissions: PermissionPolicy,
}

impl MapPolicy {
    /// From the client's options: the allowlist realpath'ed now.
    pub fn new(opts: &PoolOptions) -> Result<Self, PoolError> {
        let allowlist = Allowlist::new(&opts.allowed_dirs)?;
        let permissions =
            PermissionPolicy { reject_other_bits: opts.reject_other_bits, ..Default::default() };
        Ok(Self { allowlist, permissions })
    }

    fn open(&self, uri: &str, access: Access, len: u64) -> Result<std::fs::File, PoolError> {
        let uri = ShmUri::parse(uri)?;
        let (file, _info) = open_region(&uri, &self.allowlist, &self.permissions, access, len)?;
        Ok(file)
    }

    fn read_write(&self, uri: &str, len: u64) -> Result<Arc<Mapping>, PoolError> {
        let file = self.open(uri, Access::ReadWrite, len)?;
        let len =
            usize::try_from(len).map_err(|_| PoolError::BadGrant(format!("{uri}: too large")))?;
        use std::os::fd::AsFd;
        Ok(Arc::new(Mapping::from_fd(file.as_fd(), SizePolicy::AtLeast(len))?))
    }

    fn read_only(&self, uri: &str, len: u64) -> Result<Arc<ReadOnlyMapping>, PoolError> {
        let file = self.open(uri, Access::ReadOnly, len)?;
        let len =
            usize::try_from(len).map_err(|_| PoolError::BadGrant(format!("{uri}: too large")))?;
        Ok(Arc::new(ReadOnlyMapping::map(&file, len)?))
    }

    /// The wake sidecar, if the grant has one.
    pub fn wake(&self, grant: &Grant) -> Result<Option<WakeRegion<Arc<Mapping>>>, PoolError> {
        let Some(uri) = &grant.wake_uri else { return Ok(None) };
        let region = self.read_write(uri, WAKE_FILE_BYTES as u64)?;
        Ok(Some(WakeRegion::open(region)?))
    }

    /// The producer's view of a grant, twice over the same mappings: one stream for the
    /// publisher, one for the heartbeat the control plane writes. Every region read-write,
    /// superblocks checked.
    #[allow(clippy::type_complexity)]
    pub fn writable_streams(
        &self,
        grant: &Grant,
    ) -> Result<(Stream<Arc<Mapping>>, Stream<Arc<Mapping>>), PoolError> {
        Self::two_streams(grant, |uri, len| self.read_write(uri, len))
    }

    /// A consumer's view of a grant, twice over the same mappings (one stream to read, one
    /// for the liveness check): every region read-only, superblocks checked against the
    /// grant (conformance 3: any mismatch refuses the mapping, nothing consumed).
    #[allow(clippy::type_complexity)]
    pub fn readable_streams(
        &self,
        grant: &Grant,
    ) -> Result<(Stream<Arc<ReadOnlyMapping>>, Stream<Arc<ReadOnlyMapping>>), PoolError> {
        Self::two_streams(grant, |uri, len| self.read_only(uri, len))
    }

    /// Maps every region of `grant` once with `map` (URI, exact length) and opens two
    /// streams over the mappings, superblocks checked.
    fn two_streams<R: crate::rings::region::Region + Clone>(
        grant: &Grant,
        map: impl Fn(&str, u64) -> Result<R, PoolError>,
    ) -> Result<(Stream<R>, Stream<R>), PoolError> {
        let spec = spec_of(grant);
        let header = map(&grant.header_uri, shm::header_ring_len(grant.nslots))?;
        let pools = grant
            .pools
            .iter()
            .map(|p| map(&p.uri, shm::payload_pool_len(grant.nslots, p.stride_bytes)))
            .collect::<Result<Vec<_>, _>>()?;
        let first = Stream::open(&spec, header.clone(), pools.clone())?;
        Ok((first, Stream::open(&spec, header, pools)?))
    }
}

/// What the superblocks must say, from the grant.
pub fn spec_of(grant: &Grant) -> StreamSpec {
    StreamSpec {
        epoch: grant.epoch,
        stream_id: grant.stream_id,
        nslots: grant.nslots,
        pools: grant
            .pools
            .iter()
            .map(|p| PoolSpec { pool_id: p.pool_id, stride_bytes: p.stride_bytes })
            .collect(),
    }
}
