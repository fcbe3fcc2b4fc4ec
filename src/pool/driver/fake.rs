//! [`FakeBackend`]: an in-memory [`ShmBackend`] that records every call, keeps a set of epochs
//! "on disk" per stream, and fails when told to. For the driver's tests and for anyone who
//! drives a [`Driver`](super::Driver) without files.

use std::collections::{BTreeMap, BTreeSet};

use super::{EpochUris, GcPolicy, ShmBackend};
use crate::pool::config::Profile;

/// One call the driver made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendCall {
    /// [`ShmBackend::create_epoch`].
    CreateEpoch {
        /// The stream.
        stream_id: u32,
        /// The epoch asked for.
        epoch: u64,
        /// The profile's name.
        profile: String,
        /// The hugepages flag.
        require_hugepages: bool,
    },
    /// [`ShmBackend::gc`].
    Gc {
        /// The stream.
        stream_id: u32,
        /// The epoch to keep (0: none).
        current_epoch: u64,
        /// When.
        now_ns: u64,
        /// The policy passed.
        policy: GcPolicy,
    },
}

/// An in-memory backend. Public fields are the knobs and the record.
#[derive(Debug, Clone, Default)]
pub struct FakeBackend {
    /// Every create and GC call, in order.
    pub calls: Vec<BackendCall>,
    /// What [`ShmBackend::base_is_hugetlbfs`] answers.
    pub hugetlbfs: bool,
    /// While `Some`, every create fails with this message.
    pub fail_creates: Option<String>,
    /// Epoch directories per stream: created ones are added, GC removes per its policy. Seed it
    /// to model the files a previous driver left.
    pub disk: BTreeMap<u32, BTreeSet<u64>>,
    /// The state of [`ShmBackend::entropy`]: a splitmix64 sequence, so lease ids are not
    /// consecutive (and tests stay deterministic).
    pub entropy_state: u64,
}

impl FakeBackend {
    /// The epochs [`ShmBackend::create_epoch`] was asked for, in order.
    pub fn created_epochs(&self, stream_id: u32) -> Vec<u64> {
        self.calls
            .iter()
            .filter_map(|c| match c {
                BackendCall::CreateEpoch { stream_id: s, epoch, .. } if *s == stream_id => {
                    Some(*epoch)
                }
                _ => None,
            })
            .collect()
    }

    /// The header URI the fake makes for `stream_id`/`epoch`.
    pub fn header_uri(stream_id: u32, epoch: u64, require_hugepages: bool) -> String {
        format!(
            "shm:file?path=/dev/shm/tensorpool-test/default/{stream_id}/{epoch}/header.ring\
             |require_hugepages={require_hugepages}"
        )
    }

    /// The pool URI the fake makes.
    pub fn pool_uri(stream_id: u32, epoch: u64, pool_id: u16, require_hugepages: bool) -> String {
        format!(
            "shm:file?path=/dev/shm/tensorpool-test/default/{stream_id}/{epoch}/{pool_id}.pool\
             |require_hugepages={require_hugepages}"
        )
    }
}

impl ShmBackend for FakeBackend {
    fn entropy(&mut self) -> Option<u64> {
        Some(super::splitmix64(&mut self.entropy_state))
    }

    fn create_epoch(
        &mut self,
        stream_id: u32,
        epoch: u64,
        profile: &Profile,
        require_hugepages: bool,
    ) -> Result<EpochUris, String> {
        self.calls.push(BackendCall::CreateEpoch {
            stream_id,
            epoch,
            profile: profile.name.clone(),
            require_hugepages,
        });
        if let Some(error) = &self.fail_creates {
            return Err(error.clone());
        }
        self.disk.entry(stream_id).or_default().insert(epoch);
        Ok(EpochUris {
            header_uri: Self::header_uri(stream_id, epoch, require_hugepages),
            pool_uris: profile
                .payload_pools
                .iter()
                .map(|p| Self::pool_uri(stream_id, epoch, p.pool_id, require_hugepages))
                .collect(),
        })
    }

    /// Keeps `current_epoch` and the newest `keep - 1` others; deletes older ones that are at
    /// least `min_age_ns` old (age = now - epoch, epochs being monotonic ns).
    fn gc(&mut self, stream_id: u32, current_epoch: u64, now_ns: u64, policy: GcPolicy) {
        self.calls.push(BackendCall::Gc { stream_id, current_epoch, now_ns, policy });
        let Some(epochs) = self.disk.get_mut(&stream_id) else { return };
        let others: Vec<u64> = epochs.iter().copied().filter(|&e| e != current_epoch).collect();
        let keep_others = policy.keep.saturating_sub(1) as usize;
        let old = others.len().saturating_sub(keep_others);
        for epoch in &others[..old] {
            if now_ns.saturating_sub(*epoch) >= policy.min_age_ns {
                epochs.remove(epoch);
            }
        }
    }

    fn base_is_hugetlbfs(&self) -> bool {
        self.hugetlbfs
    }

    fn max_epoch_on_disk(&self, stream_id: u32) -> Option<u64> {
        self.disk.get(&stream_id).and_then(|e| e.last().copied())
    }
}
