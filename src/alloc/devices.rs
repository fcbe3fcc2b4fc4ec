//! The simulated device table (`specs/alloc-protocol.md`, "Devices"; the figures of
//! `specs/alloc-server-reference.md` §6).
//!
//! The original server detected hardware at start-up; corelane's daemon has a table instead,
//! from config or from board presets. Device `i` is entry `i` of the table; ids past its end
//! (up to [`MAX_DEVICES`]) are tracked by the ledger with capacity 0 and answer device-info
//! queries with `is_available = 0`.
//!
//! L1 capacity is worker cores x L1 per core (functional Tensix workers), not the original's
//! L1 x full NoC grid, which counted DRAM, Ethernet, ARC and PCIe tiles that have no worker L1.

use super::wire::MAX_DEVICES;

/// A chip architecture, with the original's `arch_type` codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Arch {
    /// No device (the code of an unconfigured slot).
    Invalid = 0,
    /// Grayskull (e150).
    Grayskull = 1,
    /// Wormhole B0 (n150, n300).
    WormholeB0 = 2,
    /// Blackhole (p100a, p150).
    Blackhole = 3,
    /// Quasar (simulation only).
    Quasar = 4,
}

impl Arch {
    /// Every architecture, in code order.
    pub const ALL: [Arch; 5] =
        [Arch::Invalid, Arch::Grayskull, Arch::WormholeB0, Arch::Blackhole, Arch::Quasar];

    /// The `arch_type` code on the wire.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The architecture for code `v`, if it is one.
    pub fn from_code(v: u32) -> Option<Arch> {
        Self::ALL.get(v as usize).copied()
    }

    /// Its name, as TT-Metal spells it ("Wormhole_B0").
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Invalid => "Invalid",
            Arch::Grayskull => "Grayskull",
            Arch::WormholeB0 => "Wormhole_B0",
            Arch::Blackhole => "Blackhole",
            Arch::Quasar => "Quasar",
        }
    }
}

/// One device (one chip) of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The chip's architecture.
    pub arch: Arch,
    /// The board preset it came from ("n300"), or a name given in config.
    pub board: &'static str,
    /// DRAM channels (banks, in TT-Metal's view).
    pub dram_channels: u32,
    /// Bytes per DRAM channel.
    pub dram_per_channel: u64,
    /// L1 bytes per worker core.
    pub l1_per_core: u64,
    /// Functional worker cores.
    pub cores: u32,
}

/// 1 GiB.
const GIB: u64 = 1 << 30;

impl DeviceSpec {
    /// The boards [`DeviceSpec::preset`] knows, in the order error messages list them.
    pub const BOARDS: [&'static str; 4] = ["n150", "n300", "p150", "e150"];

    /// The preset for `board` (case-insensitive): one chip of that board.
    ///
    /// - `n150`: Wormhole_B0, 12 x 1 GiB DRAM, 1,499,136 B L1 per core, 72 cores;
    /// - `n300`: one of the card's two Wormhole_B0 chips: 12 x 1 GiB, 1,499,136 B, 64 cores;
    /// - `p150`: Blackhole, 8 x 4,278,190,080 B, 1,572,864 B, 140 cores;
    /// - `e150`: Grayskull, 8 x 1 GiB, 1 MiB, 120 cores.
    pub fn preset(board: &str) -> Option<DeviceSpec> {
        let (board, arch, dram_channels, dram_per_channel, l1_per_core, cores) =
            match board.to_ascii_lowercase().as_str() {
                "n150" => ("n150", Arch::WormholeB0, 12, GIB, 1_499_136, 72),
                "n300" => ("n300", Arch::WormholeB0, 12, GIB, 1_499_136, 64),
                "p150" => ("p150", Arch::Blackhole, 8, 4_278_190_080, 1_572_864, 140),
                "e150" => ("e150", Arch::Grayskull, 8, GIB, 1 << 20, 120),
                _ => return None,
            };
        Some(DeviceSpec { arch, board, dram_channels, dram_per_channel, l1_per_core, cores })
    }

    /// DRAM capacity: channels x bytes per channel.
    pub const fn dram_capacity(&self) -> u64 {
        (self.dram_channels as u64).saturating_mul(self.dram_per_channel)
    }

    /// L1 capacity: worker cores x L1 per core.
    pub const fn l1_capacity(&self) -> u64 {
        (self.cores as u64).saturating_mul(self.l1_per_core)
    }
}

/// Why a device table could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A board name that is not a preset.
    #[error("unknown board {board:?}: expected one of n150, n300, p150, e150")]
    UnknownBoard {
        /// The name given.
        board: String,
    },
    /// More devices than the ledger tracks.
    #[error("{count} devices configured: at most {max}", max = MAX_DEVICES)]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// The daemon's devices: at most [`MAX_DEVICES`], device `i` = entry `i`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceTable {
    specs: Vec<DeviceSpec>,
}

impl DeviceTable {
    /// A table of `specs` (device `i` = `specs[i]`).
    pub fn new(specs: Vec<DeviceSpec>) -> Result<DeviceTable, DeviceError> {
        if specs.len() > MAX_DEVICES {
            return Err(DeviceError::TooMany { count: specs.len() });
        }
        Ok(DeviceTable { specs })
    }

    /// A table with no devices (the ledger still tracks ids 0..8, with capacity 0).
    pub fn empty() -> DeviceTable {
        DeviceTable { specs: Vec::new() }
    }

    /// A table of board presets, one chip per name (`["n300", "n300"]` is one n300 card).
    pub fn from_boards(boards: &[&str]) -> Result<DeviceTable, DeviceError> {
        if boards.len() > MAX_DEVICES {
            return Err(DeviceError::TooMany { count: boards.len() });
        }
        let specs = boards
            .iter()
            .map(|b| {
                DeviceSpec::preset(b)
                    .ok_or_else(|| DeviceError::UnknownBoard { board: b.to_string() })
            })
            .collect::<Result<Vec<_>, _>>()?;
        DeviceTable::new(specs)
    }

    /// The default table: the two Wormhole_B0 chips of one n300 card (devices 0 and 1, 64
    /// worker cores each). The "two Wormhole_B0 n300" is read as the two chips of an
    /// n300, each its own device as TT-Metal numbers them, not as two cards (four chips).
    pub fn default_table() -> DeviceTable {
        let chip = DeviceSpec::preset("n300");
        // The preset name is a literal from `DeviceSpec::BOARDS`: the lookup cannot fail.
        let chip = chip.expect("n300 is a preset");
        DeviceTable { specs: vec![chip, chip] }
    }

    /// Device `device`, if the table has it.
    pub fn get(&self, device: u8) -> Option<&DeviceSpec> {
        self.specs.get(device as usize)
    }

    /// How many devices the table has.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// Whether the table has no devices.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// The devices, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &DeviceSpec> + '_ {
        self.specs.iter()
    }
}

impl Default for DeviceTable {
    /// [`DeviceTable::default_table`].
    fn default() -> Self {
        DeviceTable::default_table()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_codes_and_names() {
        for (i, a) in Arch::ALL.iter().enumerate() {
            assert_eq!(a.code(), i as u32);
            assert_eq!(Arch::from_code(i as u32), Some(*a));
        }
        assert_eq!(Arch::from_code(5), None);
        assert_eq!(Arch::WormholeB0.name(), "Wormhole_B0");
        assert_eq!(Arch::Blackhole.code(), 3);
        assert_eq!(Arch::Quasar.code(), 4);
    }

    #[test]
    fn presets_follow_the_reference_figures() {
        let n150 = DeviceSpec::preset("n150").unwrap();
        assert_eq!(n150.arch, Arch::WormholeB0);
        assert_eq!(n150.dram_capacity(), 12 << 30);
        assert_eq!(n150.l1_capacity(), 72 * 1_499_136);

        let n300 = DeviceSpec::preset("n300").unwrap();
        assert_eq!(n300.arch, Arch::WormholeB0);
        assert_eq!(n300.dram_capacity(), 12 << 30);
        assert_eq!(n300.cores, 64);
        assert_eq!(n300.l1_capacity(), 64 * 1_499_136); // ~91.5 MiB per chip

        let p150 = DeviceSpec::preset("p150").unwrap();
        assert_eq!(p150.arch, Arch::Blackhole);
        assert_eq!(p150.dram_capacity(), 34_225_520_640);
        assert_eq!(p150.l1_capacity(), 140 * 1_572_864); // 210 MiB
        assert!(p150.dram_per_channel <= u32::MAX as u64, "fits the u32 wire field");

        let e150 = DeviceSpec::preset("e150").unwrap();
        assert_eq!(e150.arch, Arch::Grayskull);
        assert_eq!(e150.dram_capacity(), 8 << 30);
        assert_eq!(e150.l1_capacity(), 120 << 20);

        assert_eq!(DeviceSpec::preset("N300"), Some(n300), "case-insensitive");
        assert_eq!(DeviceSpec::preset("n300").unwrap().board, "n300");
        assert_eq!(DeviceSpec::preset("p100"), None);
        for b in DeviceSpec::BOARDS {
            assert!(DeviceSpec::preset(b).is_some(), "{b}");
        }
    }

    #[test]
    fn default_table_is_two_n300_chips() {
        let t = DeviceTable::default_table();
        assert_eq!(t.len(), 2);
        assert!(!t.is_empty());
        for d in 0..2 {
            let s = t.get(d).unwrap();
            assert_eq!(s.board, "n300");
            assert_eq!(s.arch, Arch::WormholeB0);
        }
        assert_eq!(t.get(2), None);
        assert_eq!(t.get(255), None);
        assert_eq!(DeviceTable::default(), t);
    }

    #[test]
    fn from_boards_maps_index_to_device() {
        let t = DeviceTable::from_boards(&["e150", "p150", "n150"]).unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(0).unwrap().arch, Arch::Grayskull);
        assert_eq!(t.get(1).unwrap().arch, Arch::Blackhole);
        assert_eq!(t.get(2).unwrap().board, "n150");
        assert_eq!(t.iter().count(), 3);
        assert!(DeviceTable::from_boards(&[]).unwrap().is_empty());
        assert!(DeviceTable::empty().is_empty());
    }

    #[test]
    fn from_boards_errors() {
        let e = DeviceTable::from_boards(&["n300", "x9"]).unwrap_err();
        assert_eq!(e, DeviceError::UnknownBoard { board: "x9".into() });
        let text = e.to_string();
        assert!(text.contains("\"x9\""), "{text}");
        for b in DeviceSpec::BOARDS {
            assert!(text.contains(b), "{text} names {b}");
        }
        let nine = ["n150"; 9];
        let e = DeviceTable::from_boards(&nine).unwrap_err();
        assert_eq!(e, DeviceError::TooMany { count: 9 });
        assert_eq!(e.to_string(), "9 devices configured: at most 8");
        assert!(DeviceTable::from_boards(&["n150"; 8]).is_ok());
        let specs = vec![DeviceSpec::preset("n150").unwrap(); 9];
        assert_eq!(DeviceTable::new(specs), Err(DeviceError::TooMany { count: 9 }));
    }
}
