//! Real boards: the same scenarios on hardware, flashed and watched through the vendors'
//! tools — `probe-rs` (STM32: RTT log) and `espflash` (ESP32-C3: serial log). The identity
//! bundle is written to the board's identity slot first (addresses from `fleet-provision`'s
//! board table), then the firmware image is flashed and run; its `fleet:` log lines drive the
//! scenario exactly as QEMU's semihosting output does.

use std::path::Path;

use fleet_provision::boards;
use tokio::process::Command;

/// A supported board and how to reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeBoard {
    /// NUCLEO-F767ZI through its ST-LINK, with probe-rs.
    Stm32f767zi,
    /// ESP32-C3 through its USB serial/JTAG, with espflash.
    Esp32c3,
}

impl ProbeBoard {
    pub const ALL: [(ProbeBoard, &'static str); 2] = [
        (ProbeBoard::Stm32f767zi, "stm32f767zi"),
        (ProbeBoard::Esp32c3, "esp32c3"),
    ];

    pub fn parse(s: &str) -> Option<ProbeBoard> {
        ProbeBoard::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(s))
            .map(|(b, _)| *b)
    }

    pub fn name(self) -> &'static str {
        ProbeBoard::ALL
            .iter()
            .find(|(b, _)| *b == self)
            .map_or("?", |(_, n)| n)
    }

    /// The tool this board needs on PATH.
    pub fn tool(self) -> &'static str {
        match self {
            ProbeBoard::Stm32f767zi => "probe-rs",
            ProbeBoard::Esp32c3 => "espflash",
        }
    }
}

fn io_error(message: String) -> std::io::Error {
    std::io::Error::other(message)
}

/// Writes `bundle` to the board's identity slot A, then returns the command that flashes
/// `image`, runs it and prints its log on stdout.
pub async fn flash_and_run(
    board: &ProbeBoard,
    image: &Path,
    bundle: &Path,
) -> std::io::Result<Command> {
    let table = boards::board(board.name()).map_err(|e| io_error(e.to_string()))?;
    let bytes = std::fs::read(bundle)?;
    let dir = bundle.parent().unwrap_or(Path::new("."));
    let mut flash_identity = match board {
        ProbeBoard::Stm32f767zi => {
            let hex = boards::to_ihex(&bytes, table, boards::Slot::A)
                .map_err(|e| io_error(e.to_string()))?;
            let hex_path = dir.join("identity.hex");
            std::fs::write(&hex_path, hex)?;
            let mut c = Command::new("probe-rs");
            c.args([
                "download",
                "--chip",
                "STM32F767ZITx",
                "--binary-format",
                "hex",
            ])
            .arg(&hex_path);
            c
        }
        ProbeBoard::Esp32c3 => {
            let mut c = Command::new("espflash");
            c.args(["write-bin", "--chip", "esp32c3"])
                .arg(format!("{:#x}", table.slot_a))
                .arg(bundle);
            c
        }
    };
    let status = flash_identity.status().await.map_err(|e| {
        io_error(format!(
            "{}: {e} (install it: see README, Real boards)",
            board.tool()
        ))
    })?;
    if !status.success() {
        return Err(io_error(format!(
            "writing the identity bundle with {} failed: {status}",
            board.tool()
        )));
    }
    let mut run = match board {
        ProbeBoard::Stm32f767zi => {
            let mut c = Command::new("probe-rs");
            c.args(["run", "--chip", "STM32F767ZITx"]).arg(image);
            c
        }
        ProbeBoard::Esp32c3 => {
            let mut c = Command::new("espflash");
            // The board crate's partition table reserves the identity partition, so flashing
            // the application never touches the bundle written above.
            c.args([
                "flash",
                "--chip",
                "esp32c3",
                "--partition-table",
                "firmware/boards/esp32c3/partitions.csv",
                "--monitor",
                "--non-interactive",
            ])
            .arg(image);
            c
        }
    };
    run.kill_on_drop(true);
    Ok(run)
}
