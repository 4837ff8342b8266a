//! Where each supported board keeps its identity bundle, and the bundle as Intel HEX placed
//! there (what flashing tools take: probe-rs, STM32CubeProgrammer, QEMU's loader, …).

use crate::error::Error;

/// A board's identity flash slots (A and B, for rotation with rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Board {
    pub name: &'static str,
    /// Address of slot A (absolute for memory-mapped flash, a flash offset for ESP32-C3).
    pub slot_a: u32,
    pub slot_b: u32,
    /// Bytes per slot; a bundle must fit.
    pub slot_size: u32,
    pub note: &'static str,
}

/// The boards fleet supports. Firmware board crates read the bundle from these addresses.
pub const BOARDS: [Board; 3] = [
    Board {
        name: "qemu-mps2-an386",
        slot_a: 0x003F_0000,
        slot_b: 0x003F_8000,
        slot_size: 0x8000,
        note: "last 64 KiB of the 4 MiB code SSRAM; QEMU: -device loader,file=bundle.bin,addr=0x3f0000",
    },
    Board {
        name: "esp32c3",
        slot_a: 0x003F_0000,
        slot_b: 0x003F_8000,
        slot_size: 0x8000,
        note: "flash offset of the 64 KiB `fleet_id` data partition (4 MiB flash); espflash write-bin 0x3f0000",
    },
    Board {
        name: "stm32f767zi",
        slot_a: 0x0818_0000,
        slot_b: 0x081C_0000,
        slot_size: 0x4_0000,
        note: "the last two 256 KiB sectors (10 and 11) of the 2 MiB flash in its default single-bank mode, so each slot erases on its own",
    },
];

/// Looks a board up by name.
pub fn board(name: &str) -> Result<&'static Board, Error> {
    BOARDS
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| Error::InvalidInput {
            field: "board",
            message: format!(
                "{name:?} is not one of {}",
                BOARDS.iter().map(|b| b.name).collect::<Vec<_>>().join(", ")
            ),
        })
}

/// Which slot to place a bundle in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

/// The bundle as Intel HEX (I32HEX) at the board's slot address.
pub fn to_ihex(bundle: &[u8], board: &Board, slot: Slot) -> Result<String, Error> {
    if bundle.len() > board.slot_size as usize {
        return Err(Error::InvalidInput {
            field: "bundle",
            message: format!(
                "{} bytes do not fit the {}-byte identity slot of {}",
                bundle.len(),
                board.slot_size,
                board.name
            ),
        });
    }
    let base = match slot {
        Slot::A => board.slot_a,
        Slot::B => board.slot_b,
    };
    let mut records = Vec::new();
    let mut upper = None;
    for (i, chunk) in bundle.chunks(16).enumerate() {
        let address = base + (i * 16) as u32;
        if upper != Some(address >> 16) {
            upper = Some(address >> 16);
            records.push(ihex::Record::ExtendedLinearAddress((address >> 16) as u16));
        }
        records.push(ihex::Record::Data {
            offset: (address & 0xFFFF) as u16,
            value: chunk.to_vec(),
        });
    }
    records.push(ihex::Record::EndOfFile);
    Ok(ihex::create_object_file_representation(&records)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads Intel HEX back into (address, byte) pairs.
    fn load(hex: &str) -> Vec<(u32, u8)> {
        let mut upper = 0u32;
        let mut out = Vec::new();
        for record in ihex::Reader::new(hex) {
            match record.unwrap() {
                ihex::Record::ExtendedLinearAddress(u) => upper = u32::from(u) << 16,
                ihex::Record::Data { offset, value } => {
                    for (i, b) in value.into_iter().enumerate() {
                        out.push((upper + u32::from(offset) + i as u32, b));
                    }
                }
                ihex::Record::EndOfFile => {}
                other => panic!("unexpected record {other:?}"),
            }
        }
        out
    }

    #[test]
    fn bundle_lands_at_the_slot_address_byte_for_byte() {
        let bundle: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for board in &BOARDS {
            for (slot, base) in [(Slot::A, board.slot_a), (Slot::B, board.slot_b)] {
                let hex = to_ihex(&bundle, board, slot).unwrap();
                let bytes = load(&hex);
                assert_eq!(bytes.len(), bundle.len());
                for (i, (addr, b)) in bytes.into_iter().enumerate() {
                    assert_eq!((addr, b), (base + i as u32, bundle[i]), "{}", board.name);
                }
                assert!(hex.trim_end().ends_with(":00000001FF"));
            }
        }
    }

    #[test]
    fn a_slot_crossing_a_64k_boundary_gets_a_new_upper_address() {
        let board = Board {
            name: "t",
            slot_a: 0x0001_FFF0,
            slot_b: 0,
            slot_size: 64,
            note: "",
        };
        let hex = to_ihex(&[0xAB; 48], &board, Slot::A).unwrap();
        assert_eq!(load(&hex).last().unwrap().0, 0x0002_001F);
        assert_eq!(hex.matches(":02000004").count(), 2);
    }

    #[test]
    fn too_big_or_unknown_is_refused() {
        let board = board("stm32f767zi").unwrap();
        assert!(to_ihex(&vec![0; board.slot_size as usize + 1], board, Slot::A).is_err());
        assert!(super::board("esp32")
            .unwrap_err()
            .to_string()
            .contains("esp32c3"));
    }
}
