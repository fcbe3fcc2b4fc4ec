//! The 256-byte header-ring slot (spec §2.1): [`SlotHeader`] with its embedded [`TensorHeader`],
//! the producer-side builders, and the consumer-side validation of §2.3 (conformance 13-22).

use core::fmt;

use zerocopy::little_endian::{I16, I32, U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{
    payload_offset, Dtype, MajorOrder, ProgressUnit, Truncated, HEADER_BYTES_LEN, MAX_DIMS,
    SLOT_BYTES, TENSOR_HEADER_BLOCK_LENGTH, TENSOR_HEADER_TEMPLATE_ID, TENSOR_HEADER_VERSION,
    WIRE_SCHEMA_ID,
};

/// One header-ring slot: a raw SBE body (template 51, block length 60) followed by the
/// `headerBytes` field (a `u32` length of 192, then the embedded [`TensorHeader`]).
///
/// A producer builds the image with [`SlotHeader::new`]; `seq_commit` stays 0 there because the
/// seqlock owns that word. A consumer validates its copy with [`SlotHeader::validate`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SlotHeader {
    /// `(seq << 1) | commit_bit`; 8-byte aligned in the mapping, accessed atomically.
    pub seq_commit: U64,
    /// Payload length in bytes; 0 is a valid frame with no payload.
    pub values_len_bytes: U32,
    /// Payload-pool slot; equals the header index in v1.2.
    pub payload_slot: U32,
    /// Payload pool holding the frame.
    pub pool_id: U16,
    /// Offset within the pool slot; must be 0 in v1.2 (unaligned).
    pub payload_offset: U32,
    /// Capture or source time, ns (unaligned).
    pub timestamp_ns: U64,
    /// Links the frame to a DataSourceMeta version.
    pub meta_version: U32,
    /// Reserved; the producer zeroes it, the consumer ignores it.
    pub pad: [u8; 26],
    /// Length prefix of the embedded header; always [`HEADER_BYTES_LEN`].
    pub header_bytes_len: U32,
    /// The embedded tensor header, message header included.
    pub tensor: TensorHeader,
}

/// The embedded tensor header (template 52): 8-byte message header plus a 184-byte block.
///
/// Offsets below are within this struct; within the slot add 64 (so `dims` sits at 83,
/// `strides` at 115: `pad_align` aligns nothing, trap T3).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct TensorHeader {
    /// `{blockLength 184, templateId 52, schemaId 900, version 1}`.
    pub message_header: MessageHeader,
    /// [`Dtype`] as raw `i16`.
    pub dtype: I16,
    /// [`MajorOrder`] as raw `i16`.
    pub major_order: I16,
    /// Number of used `dims` / `strides` entries, 1..=8.
    pub ndims: u8,
    /// Written 0; aligns nothing.
    pub pad_align: u8,
    /// [`ProgressUnit`] as raw `u8`.
    pub progress_unit: u8,
    /// Bytes per progress step; 0 is legitimate with `ProgressUnit::None` (trap T16).
    pub progress_stride_bytes: U32,
    /// Extent of each dimension; entries at or past `ndims` are zero.
    pub dims: [I32; MAX_DIMS],
    /// Bytes per step of each dimension; 0 means "infer contiguous".
    pub strides: [I32; MAX_DIMS],
    /// Reserved; the producer zeroes it, the consumer ignores it. Never store pointers here.
    pub pad: [u8; 109],
}

/// SBE message header: `{blockLength, templateId, schemaId, version}`, all `u16`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct MessageHeader {
    /// Length of the fixed block that follows.
    pub block_length: U16,
    /// Message template id.
    pub template_id: U16,
    /// Schema id.
    pub schema_id: U16,
    /// Schema version.
    pub version: U16,
}

const _: () = assert!(size_of::<SlotHeader>() == SLOT_BYTES);
const _: () = assert!(size_of::<TensorHeader>() == HEADER_BYTES_LEN as usize);
const _: () = assert!(size_of::<MessageHeader>() == 8);
const _: () = assert!(align_of::<SlotHeader>() == 1);

/// A slot header that passed [`SlotHeader::validate`]: the fields a consumer uses, in native
/// types, with strides made explicit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tensor {
    /// Payload length; 0 means there is no payload to read.
    pub values_len_bytes: u32,
    /// Payload-pool slot (= header index).
    pub payload_slot: u32,
    /// Payload pool holding the frame.
    pub pool_id: u16,
    /// That pool's stride, as `pool_stride` reported it.
    pub pool_stride_bytes: u32,
    /// Capture or source time, ns.
    pub timestamp_ns: u64,
    /// DataSourceMeta version.
    pub meta_version: u32,
    /// Element type, dimensions and effective strides.
    pub shape: Shape,
}

/// A validated tensor description: the embedded header with enums decoded and strides inferred.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Element type.
    pub dtype: Dtype,
    /// Dimension order.
    pub major_order: MajorOrder,
    /// Used entries of `dims` and `strides`, 1..=8.
    pub ndims: u8,
    /// Progress unit.
    pub progress_unit: ProgressUnit,
    /// Bytes per progress step (checked against `strides` unless the unit is `None`).
    pub progress_stride_bytes: u32,
    /// Dimensions; entries at or past `ndims` are zero.
    pub dims: [u32; MAX_DIMS],
    /// Effective strides in bytes, zeros inferred as the reference implementation does; each is
    /// at most `i32::MAX`. Entries at or past `ndims` are zero.
    pub strides: [u32; MAX_DIMS],
}

/// Why a consumer drops a slot (spec §2.3). Drops are silent; the seqlock reader counts them
/// per reason in an array indexed by [`InvalidHeader::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidHeader {
    /// `payload_offset` is not 0.
    PayloadOffset {
        /// The offset seen.
        seen: u32,
    },
    /// `payload_slot` is not the header index (or not below `nslots`).
    PayloadSlot {
        /// The header index.
        expected: u32,
        /// The slot seen.
        seen: u32,
    },
    /// `pool_id` names no mapped pool.
    UnknownPool {
        /// The pool id seen.
        seen: u16,
    },
    /// `values_len_bytes` exceeds the pool's stride.
    ValuesLenTooLarge {
        /// The pool's stride.
        stride: u32,
        /// The length seen.
        seen: u32,
    },
    /// The `headerBytes` length prefix is not 192.
    HeaderBytesLen {
        /// The length seen.
        seen: u32,
    },
    /// Embedded message header schema id is not 900.
    SchemaId {
        /// The schema id seen.
        seen: u16,
    },
    /// Embedded message header template id is not 52.
    TemplateId {
        /// The template id seen.
        seen: u16,
    },
    /// Embedded message header version is not 1.
    Version {
        /// The version seen.
        seen: u16,
    },
    /// Embedded message header block length is not 184 (as C checks).
    BlockLength {
        /// The block length seen.
        seen: u16,
    },
    /// Unknown dtype (0, 12 and anything past 14 included).
    Dtype {
        /// The raw value seen.
        seen: i16,
    },
    /// Unknown major order (0 included).
    MajorOrder {
        /// The raw value seen.
        seen: i16,
    },
    /// Unknown progress unit.
    ProgressUnit {
        /// The raw value seen.
        seen: u8,
    },
    /// `ndims` is 0 or above 8 (for the builder: `dims.len()`, saturated at 255).
    Ndims {
        /// The count seen.
        seen: u8,
    },
    /// A dimension is negative.
    NegativeDim {
        /// Its axis.
        axis: u8,
        /// Its value.
        seen: i32,
    },
    /// A stride is negative (negative strides are unsupported).
    NegativeStride {
        /// Its axis.
        axis: u8,
        /// Its value.
        seen: i32,
    },
    /// A stride is smaller than the extent of the next-inner dimension: elements would overlap,
    /// or the strides contradict the major order.
    StrideOverlap {
        /// Its axis.
        axis: u8,
        /// Smallest stride that would not overlap.
        min: u64,
        /// The stride seen.
        seen: u32,
    },
    /// An inferred stride does not fit in the wire's `i32`.
    StrideOverflow {
        /// Its axis.
        axis: u8,
    },
    /// `progress_stride_bytes` is not the stride of the progress dimension.
    ProgressStride {
        /// `strides[0]` for rows, `strides[1]` for columns.
        expected: u32,
        /// The progress stride seen.
        seen: u32,
    },
    /// Column progress on a tensor with fewer than two dimensions.
    ProgressNdims {
        /// The `ndims` seen.
        seen: u8,
    },
    /// Builder only: `strides` is neither empty nor as long as `dims`.
    StrideCount {
        /// `dims.len()`.
        ndims: u8,
        /// `strides.len()`.
        seen: usize,
    },
}

impl SlotHeader {
    /// The slot image a producer writes for one frame: `payload_offset` 0, length prefix 192,
    /// pads zero, `seq_commit` 0 (left to the seqlock). `tensor` comes from
    /// [`TensorHeader::new`], which already zeroed its pads and unused dims and strides.
    pub fn new(
        values_len_bytes: u32,
        payload_slot: u32,
        pool_id: u16,
        timestamp_ns: u64,
        meta_version: u32,
        tensor: TensorHeader,
    ) -> Self {
        Self {
            seq_commit: U64::ZERO,
            values_len_bytes: U32::new(values_len_bytes),
            payload_slot: U32::new(payload_slot),
            pool_id: U16::new(pool_id),
            payload_offset: U32::ZERO,
            timestamp_ns: U64::new(timestamp_ns),
            meta_version: U32::new(meta_version),
            pad: [0; 26],
            header_bytes_len: U32::new(HEADER_BYTES_LEN),
            tensor,
        }
    }

    /// Copies a slot out of the first 256 bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, Truncated> {
        match Self::read_from_prefix(bytes) {
            Ok((slot, _rest)) => Ok(slot),
            Err(_) => Err(Truncated { expected: SLOT_BYTES, seen: bytes.len() }),
        }
    }

    /// Consumer checks of spec §2.3 on a copied slot (the seqlock words are not looked at).
    ///
    /// `expected_index` is `seq & (nslots - 1)`; `pool_stride` maps a pool id to its stride, or
    /// `None` if no such pool is mapped. Order: `payload_offset`, `payload_slot`, pool, length,
    /// `headerBytes` length, then [`TensorHeader::validate`]. Never panics.
    pub fn validate(
        &self,
        expected_index: u32,
        nslots: u32,
        pool_stride: impl Fn(u16) -> Option<u32>,
    ) -> Result<Tensor, InvalidHeader> {
        let payload_offset = self.payload_offset.get();
        if payload_offset != 0 {
            return Err(InvalidHeader::PayloadOffset { seen: payload_offset });
        }
        let payload_slot = self.payload_slot.get();
        if payload_slot != expected_index || payload_slot >= nslots {
            return Err(InvalidHeader::PayloadSlot {
                expected: expected_index,
                seen: payload_slot,
            });
        }
        let pool_id = self.pool_id.get();
        let Some(stride) = pool_stride(pool_id) else {
            return Err(InvalidHeader::UnknownPool { seen: pool_id });
        };
        let values_len_bytes = self.values_len_bytes.get();
        if values_len_bytes > stride {
            return Err(InvalidHeader::ValuesLenTooLarge { stride, seen: values_len_bytes });
        }
        let header_bytes_len = self.header_bytes_len.get();
        if header_bytes_len != HEADER_BYTES_LEN {
            return Err(InvalidHeader::HeaderBytesLen { seen: header_bytes_len });
        }
        let shape = self.tensor.validate()?;
        Ok(Tensor {
            values_len_bytes,
            payload_slot,
            pool_id,
            pool_stride_bytes: stride,
            timestamp_ns: self.timestamp_ns.get(),
            meta_version: self.meta_version.get(),
            shape,
        })
    }
}

impl TensorHeader {
    /// Builds the embedded header for a producer, with the message header filled in and pads,
    /// `pad_align` and the dims/strides past `dims.len()` zero (conformance 24).
    ///
    /// `strides` is either empty (all inferred) or as long as `dims`; 0 entries are written as 0
    /// and inferred by consumers. The result is validated as a consumer would, so a header this
    /// returns is never dropped for its shape.
    pub fn new(
        dtype: Dtype,
        major_order: MajorOrder,
        dims: &[i32],
        strides: &[i32],
        progress_unit: ProgressUnit,
        progress_stride_bytes: u32,
    ) -> Result<Self, InvalidHeader> {
        let ndims = u8::try_from(dims.len()).unwrap_or(u8::MAX);
        if ndims == 0 || usize::from(ndims) > MAX_DIMS {
            return Err(InvalidHeader::Ndims { seen: ndims });
        }
        if !strides.is_empty() && strides.len() != dims.len() {
            return Err(InvalidHeader::StrideCount { ndims, seen: strides.len() });
        }
        let mut header = Self::new_zeroed();
        header.message_header = MessageHeader::TENSOR_HEADER;
        header.dtype = I16::new(dtype.raw());
        header.major_order = I16::new(major_order.raw());
        header.ndims = ndims;
        header.progress_unit = progress_unit.raw();
        header.progress_stride_bytes = U32::new(progress_stride_bytes);
        for (slot, &dim) in header.dims.iter_mut().zip(dims) {
            *slot = I32::new(dim);
        }
        for (slot, &stride) in header.strides.iter_mut().zip(strides) {
            *slot = I32::new(stride);
        }
        header.validate()?;
        Ok(header)
    }

    /// Checks the embedded header and infers zero strides (spec §2.3, conformance 18-21).
    ///
    /// Order: schema id, template id, version, block length, dtype, major order, progress unit,
    /// `ndims`, dims, strides (sign, then inference and overlap), progress stride.
    ///
    /// Stride rule, as in C: ROW starts at the last (innermost) axis and walks outwards. The
    /// innermost stride, if 0, becomes the element size; each outer stride must be at least
    /// `inner_stride * max(inner_dim, 1)` and, if 0, becomes exactly that. COLUMN is the mirror
    /// image from axis 0. An explicit innermost stride is not compared with the element size
    /// (C does not either). All products are in `u64` from values below 2^31, so nothing
    /// overflows; an inferred stride above `i32::MAX` is refused.
    pub fn validate(&self) -> Result<Shape, InvalidHeader> {
        self.message_header.validate_tensor_header()?;
        let dtype = Dtype::try_from(self.dtype.get())
            .map_err(|_| InvalidHeader::Dtype { seen: self.dtype.get() })?;
        let major_order = MajorOrder::try_from(self.major_order.get())
            .map_err(|_| InvalidHeader::MajorOrder { seen: self.major_order.get() })?;
        let progress_unit = ProgressUnit::try_from(self.progress_unit)
            .map_err(|_| InvalidHeader::ProgressUnit { seen: self.progress_unit })?;
        let ndims = self.ndims;
        let n = usize::from(ndims);
        if n == 0 || n > MAX_DIMS {
            return Err(InvalidHeader::Ndims { seen: ndims });
        }

        let mut dims = [0u32; MAX_DIMS];
        for (axis, (out, raw)) in (0u8..).zip(dims.iter_mut().zip(&self.dims[..n])) {
            *out = u32::try_from(raw.get())
                .map_err(|_| InvalidHeader::NegativeDim { axis, seen: raw.get() })?;
        }
        let mut strides = [0u32; MAX_DIMS];
        for (axis, (out, raw)) in (0u8..).zip(strides.iter_mut().zip(&self.strides[..n])) {
            *out = u32::try_from(raw.get())
                .map_err(|_| InvalidHeader::NegativeStride { axis, seen: raw.get() })?;
        }
        infer_strides(major_order, dtype.element_size(), n, &dims, &mut strides)?;

        let progress_stride_bytes = self.progress_stride_bytes.get();
        // Effective strides are all >= 1, so a progress stride of 0 never matches below.
        let progress_axis = match progress_unit {
            ProgressUnit::None => None,
            ProgressUnit::Rows => Some(0),
            ProgressUnit::Columns if n < 2 => {
                return Err(InvalidHeader::ProgressNdims { seen: ndims })
            }
            ProgressUnit::Columns => Some(1),
        };
        if let Some(axis) = progress_axis {
            if progress_stride_bytes != strides[axis] {
                return Err(InvalidHeader::ProgressStride {
                    expected: strides[axis],
                    seen: progress_stride_bytes,
                });
            }
        }

        Ok(Shape { dtype, major_order, ndims, progress_unit, progress_stride_bytes, dims, strides })
    }
}

impl MessageHeader {
    /// The message header of an embedded tensor header.
    pub const TENSOR_HEADER: MessageHeader = MessageHeader {
        block_length: U16::new(TENSOR_HEADER_BLOCK_LENGTH),
        template_id: U16::new(TENSOR_HEADER_TEMPLATE_ID),
        schema_id: U16::new(WIRE_SCHEMA_ID),
        version: U16::new(TENSOR_HEADER_VERSION),
    };

    fn validate_tensor_header(&self) -> Result<(), InvalidHeader> {
        let (schema_id, template_id) = (self.schema_id.get(), self.template_id.get());
        let (version, block_length) = (self.version.get(), self.block_length.get());
        if schema_id != WIRE_SCHEMA_ID {
            Err(InvalidHeader::SchemaId { seen: schema_id })
        } else if template_id != TENSOR_HEADER_TEMPLATE_ID {
            Err(InvalidHeader::TemplateId { seen: template_id })
        } else if version != TENSOR_HEADER_VERSION {
            Err(InvalidHeader::Version { seen: version })
        } else if block_length != TENSOR_HEADER_BLOCK_LENGTH {
            Err(InvalidHeader::BlockLength { seen: block_length })
        } else {
            Ok(())
        }
    }
}

impl Tensor {
    /// File offset of the payload in its pool: `64 + payload_slot * stride` (`u64`, trap T6).
    pub const fn payload_offset(&self) -> u64 {
        payload_offset(self.payload_slot, self.pool_stride_bytes)
    }
}

impl Shape {
    /// The used dimensions.
    pub fn dims(&self) -> &[u32] {
        &self.dims[..usize::from(self.ndims)]
    }

    /// The used effective strides.
    pub fn strides(&self) -> &[u32] {
        &self.strides[..usize::from(self.ndims)]
    }

    /// Bytes from the first element to the end of the last: `sum((dims[i] - 1) * strides[i])`
    /// plus the element size, 0 if any dimension is 0; saturates at `u64::MAX`.
    ///
    /// The spec does not require this to fit in `values_len_bytes`; a consumer that addresses
    /// elements should check it does before reading.
    pub fn extent_bytes(&self) -> u64 {
        let mut last = 0u64;
        for (&dim, &stride) in self.dims().iter().zip(self.strides()) {
            let Some(steps) = dim.checked_sub(1) else { return 0 };
            last = last.saturating_add(u64::from(steps) * u64::from(stride));
        }
        last.saturating_add(u64::from(self.dtype.element_size()))
    }
}

impl InvalidHeader {
    /// Number of reasons; [`index`](Self::index) is below it.
    pub const COUNT: usize = 20;

    /// Counter label of each reason, by [`index`](Self::index).
    pub const NAMES: [&'static str; Self::COUNT] = [
        "payload_offset",
        "payload_slot",
        "unknown_pool",
        "values_len_too_large",
        "header_bytes_len",
        "schema_id",
        "template_id",
        "version",
        "block_length",
        "dtype",
        "major_order",
        "progress_unit",
        "ndims",
        "negative_dim",
        "negative_stride",
        "stride_overlap",
        "stride_overflow",
        "progress_stride",
        "progress_ndims",
        "stride_count",
    ];

    /// Dense index of the reason, `0..COUNT`, for a per-reason counter array.
    pub const fn index(self) -> usize {
        match self {
            Self::PayloadOffset { .. } => 0,
            Self::PayloadSlot { .. } => 1,
            Self::UnknownPool { .. } => 2,
            Self::ValuesLenTooLarge { .. } => 3,
            Self::HeaderBytesLen { .. } => 4,
            Self::SchemaId { .. } => 5,
            Self::TemplateId { .. } => 6,
            Self::Version { .. } => 7,
            Self::BlockLength { .. } => 8,
            Self::Dtype { .. } => 9,
            Self::MajorOrder { .. } => 10,
            Self::ProgressUnit { .. } => 11,
            Self::Ndims { .. } => 12,
            Self::NegativeDim { .. } => 13,
            Self::NegativeStride { .. } => 14,
            Self::StrideOverlap { .. } => 15,
            Self::StrideOverflow { .. } => 16,
            Self::ProgressStride { .. } => 17,
            Self::ProgressNdims { .. } => 18,
            Self::StrideCount { .. } => 19,
        }
    }

    /// Counter label of this reason (snake case, e.g. `"payload_offset"`).
    pub const fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

impl fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::PayloadOffset { seen } => write!(f, "payload_offset expected 0, seen {seen}"),
            Self::PayloadSlot { expected, seen } => {
                write!(f, "payload_slot expected {expected}, seen {seen}")
            }
            Self::UnknownPool { seen } => write!(f, "pool_id {seen} is not mapped"),
            Self::ValuesLenTooLarge { stride, seen } => {
                write!(f, "values_len_bytes expected at most the pool stride {stride}, seen {seen}")
            }
            Self::HeaderBytesLen { seen } => {
                write!(f, "header bytes length expected {HEADER_BYTES_LEN}, seen {seen}")
            }
            Self::SchemaId { seen } => {
                write!(f, "tensor header schema id expected {WIRE_SCHEMA_ID}, seen {seen}")
            }
            Self::TemplateId { seen } => write!(
                f,
                "tensor header template id expected {TENSOR_HEADER_TEMPLATE_ID}, seen {seen}"
            ),
            Self::Version { seen } => {
                write!(f, "tensor header version expected {TENSOR_HEADER_VERSION}, seen {seen}")
            }
            Self::BlockLength { seen } => write!(
                f,
                "tensor header block length expected {TENSOR_HEADER_BLOCK_LENGTH}, seen {seen}"
            ),
            Self::Dtype { seen } => write!(f, "dtype expected 1..=11, 13 or 14, seen {seen}"),
            Self::MajorOrder { seen } => write!(f, "major_order expected 1 or 2, seen {seen}"),
            Self::ProgressUnit { seen } => write!(f, "progress_unit expected 0..=2, seen {seen}"),
            Self::Ndims { seen } => write!(f, "ndims expected 1..={MAX_DIMS}, seen {seen}"),
            Self::NegativeDim { axis, seen } => {
                write!(f, "dims[{axis}] expected non-negative, seen {seen}")
            }
            Self::NegativeStride { axis, seen } => {
                write!(f, "strides[{axis}] expected non-negative, seen {seen}")
            }
            Self::StrideOverlap { axis, min, seen } => {
                write!(f, "strides[{axis}] expected at least {min} (no overlap), seen {seen}")
            }
            Self::StrideOverflow { axis } => {
                write!(f, "strides[{axis}] inferred above {}, does not fit the wire", i32::MAX)
            }
            Self::ProgressStride { expected, seen } => {
                write!(f, "progress_stride_bytes expected {expected}, seen {seen}")
            }
            Self::ProgressNdims { seen } => {
                write!(f, "column progress expected ndims of at least 2, seen {seen}")
            }
            Self::StrideCount { ndims, seen } => {
                write!(f, "strides count expected 0 or {ndims}, seen {seen}")
            }
        }
    }
}

impl std::error::Error for InvalidHeader {}

/// Fills zero strides and checks the others, innermost axis first (see
/// [`TensorHeader::validate`]). `dims` and `strides` hold non-negative `i32` values.
fn infer_strides(
    order: MajorOrder,
    element_size: u32,
    ndims: usize,
    dims: &[u32; MAX_DIMS],
    strides: &mut [u32; MAX_DIMS],
) -> Result<(), InvalidHeader> {
    let mut inner: Option<usize> = None;
    for step in 0..ndims {
        let axis = match order {
            MajorOrder::Row => ndims - 1 - step,
            MajorOrder::Column => step,
        };
        // Both factors are below 2^31, so the product fits in u64.
        let min = match inner {
            None => u64::from(element_size),
            Some(i) => u64::from(strides[i]) * u64::from(dims[i].max(1)),
        };
        // axis < MAX_DIMS = 8, so it fits in u8.
        let axis_u8 = axis as u8;
        if strides[axis] == 0 {
            strides[axis] = u32::try_from(min)
                .ok()
                .filter(|&s| i32::try_from(s).is_ok())
                .ok_or(InvalidHeader::StrideOverflow { axis: axis_u8 })?;
        } else if inner.is_some() && u64::from(strides[axis]) < min {
            return Err(InvalidHeader::StrideOverlap { axis: axis_u8, min, seen: strides[axis] });
        }
        inner = Some(axis);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use core::mem::offset_of;

    use proptest::prelude::*;

    use super::*;

    const NSLOTS: u32 = 4;
    const STRIDE: u32 = 4096;

    /// Pool 1 with a 4096-byte stride is the only mapped pool.
    fn pools(pool_id: u16) -> Option<u32> {
        (pool_id == 1).then_some(STRIDE)
    }

    fn float32_row(dims: &[i32], strides: &[i32]) -> Result<TensorHeader, InvalidHeader> {
        TensorHeader::new(Dtype::Float32, MajorOrder::Row, dims, strides, ProgressUnit::None, 0)
    }

    /// A valid frame: seq 5 in a 4-slot ring (index 1), pool 1, 2x3 float32.
    fn slot() -> SlotHeader {
        let tensor = float32_row(&[2, 3], &[]).unwrap();
        SlotHeader::new(24, 1, 1, 123_456_789, 7, tensor)
    }

    fn validate(slot: &SlotHeader) -> Result<Tensor, InvalidHeader> {
        slot.validate(1, NSLOTS, pools)
    }

    /// Validates `slot` after `change` and returns the drop reason.
    fn drop_reason(change: impl FnOnce(&mut SlotHeader)) -> InvalidHeader {
        let mut slot = slot();
        change(&mut slot);
        validate(&slot).expect_err("slot should be dropped")
    }

    fn i32s<const N: usize>(values: [i32; N]) -> [I32; MAX_DIMS] {
        let mut out = [I32::ZERO; MAX_DIMS];
        for (o, v) in out.iter_mut().zip(values) {
            *o = I32::new(v);
        }
        out
    }

    #[test]
    fn slot_header_offsets_match_spec_table() {
        assert_eq!(offset_of!(SlotHeader, seq_commit), super::super::SEQ_COMMIT_OFFSET);
        assert_eq!(offset_of!(SlotHeader, seq_commit), 0);
        assert_eq!(offset_of!(SlotHeader, values_len_bytes), 8);
        assert_eq!(offset_of!(SlotHeader, payload_slot), 12);
        assert_eq!(offset_of!(SlotHeader, pool_id), 16);
        assert_eq!(offset_of!(SlotHeader, payload_offset), 18);
        assert_eq!(offset_of!(SlotHeader, timestamp_ns), 22);
        assert_eq!(offset_of!(SlotHeader, meta_version), 30);
        assert_eq!(offset_of!(SlotHeader, pad), 34);
        assert_eq!(offset_of!(SlotHeader, header_bytes_len), 60);
        assert_eq!(offset_of!(SlotHeader, tensor), 64);
    }

    #[test]
    fn tensor_header_offsets_match_spec_table() {
        let base = offset_of!(SlotHeader, tensor);
        assert_eq!(base + offset_of!(TensorHeader, message_header), 64);
        assert_eq!(base + offset_of!(TensorHeader, dtype), 72);
        assert_eq!(base + offset_of!(TensorHeader, major_order), 74);
        assert_eq!(base + offset_of!(TensorHeader, ndims), 76);
        assert_eq!(base + offset_of!(TensorHeader, pad_align), 77);
        assert_eq!(base + offset_of!(TensorHeader, progress_unit), 78);
        assert_eq!(base + offset_of!(TensorHeader, progress_stride_bytes), 79);
        assert_eq!(base + offset_of!(TensorHeader, dims), 83);
        assert_eq!(base + offset_of!(TensorHeader, strides), 115);
        assert_eq!(base + offset_of!(TensorHeader, pad), 147);
        assert_eq!(base + size_of::<TensorHeader>(), 256);
    }

    #[test]
    fn message_header_offsets_match_sbe() {
        assert_eq!(offset_of!(MessageHeader, block_length), 0);
        assert_eq!(offset_of!(MessageHeader, template_id), 2);
        assert_eq!(offset_of!(MessageHeader, schema_id), 4);
        assert_eq!(offset_of!(MessageHeader, version), 6);
    }

    /// A slot image written byte by byte at the table's offsets, then decoded and validated.
    #[test]
    fn decodes_reference_bytes_built_from_the_table() {
        let mut b = [0u8; 256];
        b[0..8].copy_from_slice(&11u64.to_le_bytes()); // seq_commit: seq 5, committed
        b[8..12].copy_from_slice(&[0x18, 0x00, 0x00, 0x00]); // values_len_bytes 24
        b[12..16].copy_from_slice(&[0x01, 0x00, 0x00, 0x00]); // payload_slot 1
        b[16..18].copy_from_slice(&[0x01, 0x00]); // pool_id 1
        b[18..22].copy_from_slice(&[0x00, 0x00, 0x00, 0x00]); // payload_offset 0
        b[22..30].copy_from_slice(&[0x15, 0xCD, 0x5B, 0x07, 0, 0, 0, 0]); // timestamp 123456789
        b[30..34].copy_from_slice(&[0x07, 0x00, 0x00, 0x00]); // meta_version 7
        b[60..64].copy_from_slice(&[0xC0, 0x00, 0x00, 0x00]); // headerBytes length 192
        b[64..66].copy_from_slice(&[0xB8, 0x00]); // blockLength 184
        b[66..68].copy_from_slice(&[0x34, 0x00]); // templateId 52
        b[68..70].copy_from_slice(&[0x84, 0x03]); // schemaId 900
        b[70..72].copy_from_slice(&[0x01, 0x00]); // version 1
        b[72..74].copy_from_slice(&[0x09, 0x00]); // dtype FLOAT32
        b[74..76].copy_from_slice(&[0x01, 0x00]); // major_order ROW
        b[76] = 2; // ndims
        b[77] = 0; // pad_align
        b[78] = 1; // progress_unit ROWS
        b[79..83].copy_from_slice(&[0x0C, 0x00, 0x00, 0x00]); // progress_stride_bytes 12
        b[83..87].copy_from_slice(&[0x02, 0x00, 0x00, 0x00]); // dims[0] 2
        b[87..91].copy_from_slice(&[0x03, 0x00, 0x00, 0x00]); // dims[1] 3
        b[115..119].copy_from_slice(&[0x00, 0x00, 0x00, 0x00]); // strides[0] 0 = infer
        b[119..123].copy_from_slice(&[0x04, 0x00, 0x00, 0x00]); // strides[1] 4

        let slot = SlotHeader::decode(&b).unwrap();
        assert_eq!(slot.seq_commit.get(), 11);
        assert_eq!(slot.values_len_bytes.get(), 24);
        assert_eq!(slot.payload_slot.get(), 1);
        assert_eq!(slot.pool_id.get(), 1);
        assert_eq!(slot.payload_offset.get(), 0);
        assert_eq!(slot.timestamp_ns.get(), 123_456_789);
        assert_eq!(slot.meta_version.get(), 7);
        assert_eq!(slot.pad, [0; 26]);
        assert_eq!(slot.header_bytes_len.get(), 192);
        let t = &slot.tensor;
        assert_eq!(t.message_header, MessageHeader::TENSOR_HEADER);
        assert_eq!(t.message_header.block_length.get(), 184);
        assert_eq!(t.message_header.template_id.get(), 52);
        assert_eq!(t.message_header.schema_id.get(), 900);
        assert_eq!(t.message_header.version.get(), 1);
        assert_eq!(t.dtype.get(), 9);
        assert_eq!(t.major_order.get(), 1);
        assert_eq!(t.ndims, 2);
        assert_eq!(t.pad_align, 0);
        assert_eq!(t.progress_unit, 1);
        assert_eq!(t.progress_stride_bytes.get(), 12);
        assert_eq!(t.dims, i32s([2, 3]));
        assert_eq!(t.strides, i32s([0, 4]));
        assert_eq!(t.pad, [0; 109]);

        let tensor = slot.validate(1, NSLOTS, pools).unwrap();
        assert_eq!(tensor.values_len_bytes, 24);
        assert_eq!(tensor.payload_offset(), 64 + u64::from(STRIDE));
        assert_eq!(tensor.shape.dims(), &[2, 3]);
        assert_eq!(tensor.shape.strides(), &[12, 4]);
        assert_eq!(tensor.shape.progress_unit, ProgressUnit::Rows);

        // The builder writes the same bytes (seq_commit aside, which the seqlock owns).
        let header = TensorHeader::new(
            Dtype::Float32,
            MajorOrder::Row,
            &[2, 3],
            &[0, 4],
            ProgressUnit::Rows,
            12,
        )
        .unwrap();
        let built = SlotHeader::new(24, 1, 1, 123_456_789, 7, header);
        assert_eq!(&built.as_bytes()[8..], &b[8..]);
        assert_eq!(built.seq_commit.get(), 0);
    }

    #[test]
    fn decode_of_short_input_is_an_error() {
        assert_eq!(SlotHeader::decode(&[0; 255]), Err(Truncated { expected: 256, seen: 255 }));
        assert!(SlotHeader::decode(&[0; 256]).is_ok());
    }

    /// Conformance 24: the builder zeroes pads and every dim/stride at or past ndims.
    #[test]
    fn conformance_24_builder_zeroes_pads_and_unused_dims() {
        let slot = slot();
        let bytes = slot.as_bytes();
        assert!(bytes[0..8].iter().all(|&b| b == 0), "seq_commit left to the seqlock");
        assert!(bytes[34..60].iter().all(|&b| b == 0));
        assert_eq!(bytes[77], 0);
        assert!(bytes[83 + 8..115].iter().all(|&b| b == 0));
        assert!(bytes[115 + 8..147].iter().all(|&b| b == 0));
        assert!(bytes[147..256].iter().all(|&b| b == 0));
        assert_eq!(slot.header_bytes_len.get(), 192);
        assert_eq!(slot.payload_offset.get(), 0);
    }

    #[test]
    fn valid_slot_validates() {
        let tensor = validate(&slot()).unwrap();
        assert_eq!(
            tensor,
            Tensor {
                values_len_bytes: 24,
                payload_slot: 1,
                pool_id: 1,
                pool_stride_bytes: STRIDE,
                timestamp_ns: 123_456_789,
                meta_version: 7,
                shape: Shape {
                    dtype: Dtype::Float32,
                    major_order: MajorOrder::Row,
                    ndims: 2,
                    progress_unit: ProgressUnit::None,
                    progress_stride_bytes: 0,
                    dims: [2, 3, 0, 0, 0, 0, 0, 0],
                    strides: [12, 4, 0, 0, 0, 0, 0, 0],
                },
            }
        );
        assert_eq!(tensor.shape.extent_bytes(), 24);
    }

    /// Conformance 13: payload_offset must be 0.
    #[test]
    fn conformance_13_payload_offset() {
        let reason = drop_reason(|s| s.payload_offset = U32::new(64));
        assert_eq!(reason, InvalidHeader::PayloadOffset { seen: 64 });
    }

    /// Conformance 14: payload_slot must be seq & (n - 1), and below nslots.
    #[test]
    fn conformance_14_payload_slot() {
        let reason = drop_reason(|s| s.payload_slot = U32::new(2));
        assert_eq!(reason, InvalidHeader::PayloadSlot { expected: 1, seen: 2 });
        let mut s = slot();
        s.payload_slot = U32::new(5);
        assert_eq!(
            s.validate(5, NSLOTS, pools),
            Err(InvalidHeader::PayloadSlot { expected: 5, seen: 5 })
        );
    }

    /// Conformance 15: pool_id not mapped.
    #[test]
    fn conformance_15_unknown_pool() {
        let reason = drop_reason(|s| s.pool_id = U16::new(2));
        assert_eq!(reason, InvalidHeader::UnknownPool { seen: 2 });
    }

    /// Conformance 16: values_len_bytes above the pool stride; equal is fine.
    #[test]
    fn conformance_16_values_len_above_stride() {
        let reason = drop_reason(|s| s.values_len_bytes = U32::new(STRIDE + 1));
        assert_eq!(reason, InvalidHeader::ValuesLenTooLarge { stride: STRIDE, seen: STRIDE + 1 });
        let mut s = slot();
        s.values_len_bytes = U32::new(STRIDE);
        assert!(validate(&s).is_ok());
    }

    /// Conformance 17: headerBytes length must be exactly 192.
    #[test]
    fn conformance_17_header_bytes_len() {
        for len in [0, 184, 191, 193, u32::MAX] {
            let reason = drop_reason(|s| s.header_bytes_len = U32::new(len));
            assert_eq!(reason, InvalidHeader::HeaderBytesLen { seen: len });
        }
    }

    /// Conformance 18: embedded schema, template, version, block length.
    #[test]
    fn conformance_18_embedded_message_header() {
        let reason = drop_reason(|s| s.tensor.message_header.schema_id = U16::new(901));
        assert_eq!(reason, InvalidHeader::SchemaId { seen: 901 });
        let reason = drop_reason(|s| s.tensor.message_header.template_id = U16::new(51));
        assert_eq!(reason, InvalidHeader::TemplateId { seen: 51 });
        let reason = drop_reason(|s| s.tensor.message_header.version = U16::new(2));
        assert_eq!(reason, InvalidHeader::Version { seen: 2 });
        let reason = drop_reason(|s| s.tensor.message_header.block_length = U16::new(192));
        assert_eq!(reason, InvalidHeader::BlockLength { seen: 192 });
    }

    /// Conformance 19: ndims 0 or 9; dtype 0/12/999; negative dim or stride.
    #[test]
    fn conformance_19_ndims_dtype_and_signs() {
        for ndims in [0, 9, 255] {
            let reason = drop_reason(|s| s.tensor.ndims = ndims);
            assert_eq!(reason, InvalidHeader::Ndims { seen: ndims });
        }
        for dtype in [0, 12, 999] {
            let reason = drop_reason(|s| s.tensor.dtype = I16::new(dtype));
            assert_eq!(reason, InvalidHeader::Dtype { seen: dtype });
        }
        let reason = drop_reason(|s| s.tensor.major_order = I16::new(0));
        assert_eq!(reason, InvalidHeader::MajorOrder { seen: 0 });
        let reason = drop_reason(|s| s.tensor.dims[1] = I32::new(-3));
        assert_eq!(reason, InvalidHeader::NegativeDim { axis: 1, seen: -3 });
        let reason = drop_reason(|s| s.tensor.strides[0] = I32::new(-12));
        assert_eq!(reason, InvalidHeader::NegativeStride { axis: 0, seen: -12 });
        // Entries past ndims are ignored by the consumer, even negative ones.
        let mut s = slot();
        s.tensor.dims[5] = I32::new(-1);
        s.tensor.strides[7] = I32::new(-1);
        assert!(validate(&s).is_ok());
        // The builder refuses what the consumer would drop.
        assert_eq!(float32_row(&[], &[]), Err(InvalidHeader::Ndims { seen: 0 }));
        assert_eq!(float32_row(&[1; 9], &[]), Err(InvalidHeader::Ndims { seen: 9 }));
        assert_eq!(float32_row(&[1; 300], &[]), Err(InvalidHeader::Ndims { seen: 255 }));
        assert_eq!(
            float32_row(&[2, -1], &[]),
            Err(InvalidHeader::NegativeDim { axis: 1, seen: -1 })
        );
        assert_eq!(
            float32_row(&[2, 2], &[4]),
            Err(InvalidHeader::StrideCount { ndims: 2, seen: 1 })
        );
    }

    /// Conformance 20: ROW [2,2] strides [1,1] overlap; FLOAT32 [1,2] strides 0 -> [8,4].
    #[test]
    fn conformance_20_stride_overlap_and_inference() {
        let reason = drop_reason(|s| {
            s.tensor.dims = i32s([2, 2]);
            s.tensor.strides = i32s([1, 1]);
        });
        assert_eq!(reason, InvalidHeader::StrideOverlap { axis: 0, min: 2, seen: 1 });

        let shape = float32_row(&[1, 2], &[0, 0]).unwrap().validate().unwrap();
        assert_eq!(shape.strides(), &[8, 4]);
        assert_eq!(shape.dims(), &[1, 2]);
    }

    #[test]
    fn column_order_infers_from_axis_0() {
        let header = TensorHeader::new(
            Dtype::Uint16,
            MajorOrder::Column,
            &[3, 4, 5],
            &[],
            ProgressUnit::None,
            0,
        )
        .unwrap();
        assert_eq!(header.validate().unwrap().strides(), &[2, 6, 24]);
        // Row-major strides contradict column order.
        let err = TensorHeader::new(
            Dtype::Uint16,
            MajorOrder::Column,
            &[3, 4],
            &[8, 2],
            ProgressUnit::None,
            0,
        );
        assert_eq!(err, Err(InvalidHeader::StrideOverlap { axis: 1, min: 24, seen: 2 }));
    }

    #[test]
    fn padded_strides_and_zero_dims_are_accepted() {
        // Rows padded to 64 bytes.
        let shape = TensorHeader::new(
            Dtype::Uint8,
            MajorOrder::Row,
            &[4, 10],
            &[64, 0],
            ProgressUnit::Rows,
            64,
        )
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(shape.strides(), &[64, 1]);
        assert_eq!(shape.extent_bytes(), 3 * 64 + 9 + 1);
        // A zero dimension counts as 1 for the outer stride; the tensor is empty.
        let shape = float32_row(&[3, 0], &[]).unwrap().validate().unwrap();
        assert_eq!(shape.strides(), &[4, 4]);
        assert_eq!(shape.extent_bytes(), 0);
    }

    #[test]
    fn inferred_strides_above_i32_are_refused_not_wrapped() {
        let big = i32::MAX;
        assert_eq!(
            TensorHeader::new(
                Dtype::Float64,
                MajorOrder::Row,
                &[2, big],
                &[],
                ProgressUnit::None,
                0
            ),
            Err(InvalidHeader::StrideOverflow { axis: 0 })
        );
        // Explicit maximal strides: the overlap check runs in u64 without overflow.
        let header = TensorHeader::new(
            Dtype::Uint8,
            MajorOrder::Row,
            &[big; 8],
            &[big; 8],
            ProgressUnit::None,
            0,
        );
        assert!(matches!(header, Err(InvalidHeader::StrideOverlap { axis: 6, .. })));
    }

    /// Conformance 21: progress ROWS with progress stride != strides[0]; unknown progress unit.
    #[test]
    fn conformance_21_progress() {
        let reason = drop_reason(|s| {
            s.tensor.progress_unit = ProgressUnit::Rows.raw();
            s.tensor.progress_stride_bytes = U32::new(4);
        });
        assert_eq!(reason, InvalidHeader::ProgressStride { expected: 12, seen: 4 });
        let reason = drop_reason(|s| s.tensor.progress_unit = ProgressUnit::Rows.raw());
        assert_eq!(reason, InvalidHeader::ProgressStride { expected: 12, seen: 0 });
        let reason = drop_reason(|s| s.tensor.progress_unit = 3);
        assert_eq!(reason, InvalidHeader::ProgressUnit { seen: 3 });

        let mut s = slot();
        s.tensor.progress_unit = ProgressUnit::Rows.raw();
        s.tensor.progress_stride_bytes = U32::new(12);
        assert!(validate(&s).is_ok());
        s.tensor.progress_unit = ProgressUnit::Columns.raw();
        assert_eq!(validate(&s), Err(InvalidHeader::ProgressStride { expected: 4, seen: 12 }));
        s.tensor.progress_stride_bytes = U32::new(4);
        assert!(validate(&s).is_ok());
        assert_eq!(
            TensorHeader::new(Dtype::Uint8, MajorOrder::Row, &[8], &[], ProgressUnit::Columns, 1),
            Err(InvalidHeader::ProgressNdims { seen: 1 })
        );
        // NONE ignores the progress stride, 0 or not (T16).
        s.tensor.progress_unit = ProgressUnit::None.raw();
        s.tensor.progress_stride_bytes = U32::new(12345);
        assert!(validate(&s).is_ok());
    }

    /// Conformance 22: values_len 0 is a valid frame.
    #[test]
    fn conformance_22_empty_payload_is_accepted() {
        let mut s = slot();
        s.values_len_bytes = U32::ZERO;
        assert_eq!(validate(&s).map(|t| t.values_len_bytes), Ok(0));
    }

    #[test]
    fn reasons_index_densely_and_have_unique_names() {
        let all = [
            InvalidHeader::PayloadOffset { seen: 0 },
            InvalidHeader::PayloadSlot { expected: 0, seen: 0 },
            InvalidHeader::UnknownPool { seen: 0 },
            InvalidHeader::ValuesLenTooLarge { stride: 0, seen: 0 },
            InvalidHeader::HeaderBytesLen { seen: 0 },
            InvalidHeader::SchemaId { seen: 0 },
            InvalidHeader::TemplateId { seen: 0 },
            InvalidHeader::Version { seen: 0 },
            InvalidHeader::BlockLength { seen: 0 },
            InvalidHeader::Dtype { seen: 0 },
            InvalidHeader::MajorOrder { seen: 0 },
            InvalidHeader::ProgressUnit { seen: 0 },
            InvalidHeader::Ndims { seen: 0 },
            InvalidHeader::NegativeDim { axis: 0, seen: 0 },
            InvalidHeader::NegativeStride { axis: 0, seen: 0 },
            InvalidHeader::StrideOverlap { axis: 0, min: 0, seen: 0 },
            InvalidHeader::StrideOverflow { axis: 0 },
            InvalidHeader::ProgressStride { expected: 0, seen: 0 },
            InvalidHeader::ProgressNdims { seen: 0 },
            InvalidHeader::StrideCount { ndims: 0, seen: 0 },
        ];
        assert_eq!(all.len(), InvalidHeader::COUNT);
        for (i, reason) in all.iter().enumerate() {
            assert_eq!(reason.index(), i);
            let display = reason.to_string();
            assert_eq!(display, display.to_lowercase(), "{display}");
        }
        let mut names = InvalidHeader::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), InvalidHeader::COUNT);
        assert_eq!(InvalidHeader::Dtype { seen: 12 }.name(), "dtype");
    }

    #[test]
    fn display_says_expected_and_seen() {
        assert_eq!(
            InvalidHeader::PayloadSlot { expected: 1, seen: 2 }.to_string(),
            "payload_slot expected 1, seen 2"
        );
        assert_eq!(
            InvalidHeader::HeaderBytesLen { seen: 7 }.to_string(),
            "header bytes length expected 192, seen 7"
        );
        assert_eq!(
            InvalidHeader::StrideOverlap { axis: 0, min: 2, seen: 1 }.to_string(),
            "strides[0] expected at least 2 (no overlap), seen 1"
        );
    }

    /// Row-major strides computed the naive way, in i128, as a model.
    fn model_strides(order: MajorOrder, elem: u32, dims: &[i32]) -> Option<Vec<u32>> {
        let n = dims.len();
        let mut strides = vec![0i128; n];
        let mut acc = i128::from(elem);
        for step in 0..n {
            let axis = if order == MajorOrder::Row { n - 1 - step } else { step };
            if acc > i128::from(i32::MAX) {
                return None;
            }
            strides[axis] = acc;
            acc *= i128::from(dims[axis].max(1));
        }
        Some(strides.into_iter().map(|s| u32::try_from(s).unwrap()).collect())
    }

    fn any_dtype() -> impl Strategy<Value = Dtype> {
        prop::sample::select(Dtype::ALL)
    }

    fn any_order() -> impl Strategy<Value = MajorOrder> {
        prop::sample::select(MajorOrder::ALL)
    }

    proptest! {
        #[test]
        fn validate_never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), SLOT_BYTES),
            expected_index: u32,
            nslots: u32,
            known_pool: u16,
            stride: u32,
        ) {
            let slot = SlotHeader::decode(&bytes).unwrap();
            let pools = |p| (p == known_pool).then_some(stride);
            let result = slot.validate(expected_index, nslots, pools);
            if let Err(reason) = result {
                prop_assert!(reason.index() < InvalidHeader::COUNT);
            }
            let _ = slot.tensor.validate().map(|shape| shape.extent_bytes());
        }

        #[test]
        fn validate_never_panics_on_plausible_headers(
            ndims in 0u8..=9,
            dtype in -1i16..=15,
            order in 0i16..=3,
            unit in 0u8..=3,
            progress_stride: u32,
            dims in prop::array::uniform8(
                prop_oneof![Just(0), Just(1), Just(i32::MAX), any::<i32>(), 0..64]
            ),
            strides in prop::array::uniform8(
                prop_oneof![Just(0), Just(i32::MAX), any::<i32>(), 0..4096]
            ),
        ) {
            let mut header = float32_row(&[1], &[]).unwrap();
            header.ndims = ndims;
            header.dtype = I16::new(dtype);
            header.major_order = I16::new(order);
            header.progress_unit = unit;
            header.progress_stride_bytes = U32::new(progress_stride);
            header.dims = dims.map(I32::new);
            header.strides = strides.map(I32::new);
            if let Ok(shape) = header.validate() {
                // Accepted strides never overlap, innermost axis first.
                let n = shape.dims().len();
                for k in 1..n {
                    let (outer, inner) = match shape.major_order {
                        MajorOrder::Row => (n - 1 - k, n - k),
                        MajorOrder::Column => (k, k - 1),
                    };
                    let min = u64::from(shape.strides[inner]) * u64::from(shape.dims[inner].max(1));
                    prop_assert!(u64::from(shape.strides[outer]) >= min);
                }
                let _ = shape.extent_bytes();
            }
        }

        #[test]
        fn built_headers_round_trip_and_validate(
            dtype in any_dtype(),
            order in any_order(),
            dims in prop::collection::vec(0i32..40, 1..=MAX_DIMS),
            values_len: u32,
            slot_seq: u64,
            log2_nslots in 0u32..16,
            timestamp_ns: u64,
            meta_version: u32,
            rows_progress: bool,
        ) {
            let model = model_strides(order, dtype.element_size(), &dims);
            let progress = match (&model, rows_progress) {
                (Some(strides), true) => (ProgressUnit::Rows, strides[0]),
                _ => (ProgressUnit::None, 0),
            };
            let built = TensorHeader::new(dtype, order, &dims, &[], progress.0, progress.1);
            let Some(model) = model else {
                let overflowed = matches!(built, Err(InvalidHeader::StrideOverflow { .. }));
                prop_assert!(overflowed, "model overflows, builder gave {:?}", built);
                return Ok(());
            };
            let tensor = built.unwrap();
            let nslots = 1u32 << log2_nslots;
            let index = super::super::header_index(slot_seq, nslots);
            let slot = SlotHeader::new(values_len, index, 1, timestamp_ns, meta_version, tensor);

            let back = SlotHeader::decode(slot.as_bytes()).unwrap();
            prop_assert_eq!(back, slot);
            let validated = back.validate(index, nslots, |_| Some(u32::MAX)).unwrap();
            prop_assert_eq!(validated.values_len_bytes, values_len);
            prop_assert_eq!(validated.timestamp_ns, timestamp_ns);
            prop_assert_eq!(validated.meta_version, meta_version);
            prop_assert_eq!(validated.shape.dtype, dtype);
            prop_assert_eq!(validated.shape.major_order, order);
            let dims_u32: Vec<u32> = dims.iter().map(|&d| d.unsigned_abs()).collect();
            prop_assert_eq!(validated.shape.dims(), &dims_u32[..]);
            prop_assert_eq!(validated.shape.strides(), &model[..]);
            prop_assert!(validated.shape.dims[dims.len()..].iter().all(|&d| d == 0));
            prop_assert!(validated.shape.strides[dims.len()..].iter().all(|&s| s == 0));
        }

        #[test]
        fn explicit_padded_strides_are_kept(
            dtype in any_dtype(),
            dims in prop::collection::vec(1i32..16, 1..=4),
            pads in prop::collection::vec(0i32..64, 4),
        ) {
            // Row-major strides with extra padding at every level stay valid and unchanged.
            let n = dims.len();
            let mut strides = vec![0i32; n];
            let mut acc = i32::try_from(dtype.element_size()).unwrap();
            for axis in (0..n).rev() {
                strides[axis] = acc + pads[axis];
                acc = strides[axis] * dims[axis];
            }
            let header =
                TensorHeader::new(dtype, MajorOrder::Row, &dims, &strides, ProgressUnit::None, 0);
            let shape = header.unwrap().validate().unwrap();
            let expected: Vec<u32> = strides.iter().map(|&s| s.unsigned_abs()).collect();
            prop_assert_eq!(shape.strides(), &expected[..]);
        }
    }
}
