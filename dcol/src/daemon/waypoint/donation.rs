//! The donation caps carried out: [`Donation`]'s actions on the NAT
//! table's caps chain and quota, and the count files (`state_dir/donated`
//! every 30 s, `option donation_file` hourly and at exit).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{wall_ms, WaypointDriver};
use crate::config::Config;
use crate::sys::nft;
use crate::sys::SysError;
use crate::waypoint::donation::{Action, Caps, Count, CountFrom, Donation, Month};

/// The month's count and where it is saved.
pub(super) struct Donated {
    book: Donation,
    /// Saved every check (RAM on OpenWrt) ...
    ram: PathBuf,
    /// ... and hourly (flash: survives a reboot).
    flash: PathBuf,
}

impl Donated {
    /// No caps yet, this month.
    pub fn new(cfg: &Config) -> Donated {
        Donated {
            book: Donation::new(Instant::now(), Month::of_unix(wall_ms() / 1000)),
            ram: cfg.main.state_dir.join("donated"),
            flash: cfg.waypoint.donation_file.clone(),
        }
    }

    /// `option donation_file` changed.
    pub fn set_file(&mut self, flash: &Path) {
        self.flash = flash.to_owned();
    }

    /// The caps in force.
    pub fn caps(&self) -> Caps {
        self.book.caps()
    }

    /// When the count is next checked.
    pub fn deadline(&self) -> Option<Instant> {
        self.book.deadline()
    }

    /// The bytes this month's files count (the larger).
    fn saved(&self) -> u64 {
        let month = self.book.month();
        read_count(&self.ram, month).max(read_count(&self.flash, month))
    }
}

fn nft_caps(c: Caps) -> nft::Caps {
    nft::Caps {
        kbit: c.kbit,
        month_bytes: c.month_bytes,
        used: c.used,
    }
}

/// The bytes donated in `month` according to `path` (0: none counted, or
/// another month's count; a damaged file is logged and counts 0).
fn read_count(path: &Path, month: Month) -> u64 {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            log::warn!("donation count {}: {e}; counting from 0", path.display());
            return 0;
        }
    };
    match text.parse::<Count>() {
        Ok(c) if c.month == month => c.bytes,
        Ok(_) => 0,
        Err(e) => {
            log::warn!("donation count {}: {e}; counting from 0", path.display());
            0
        }
    }
}

fn write_count(path: &Path, count: Count) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, count.to_string()) {
        log::warn!("saving {}: {e}", path.display());
    }
}

impl WaypointDriver {
    /// Installs the donation caps; the month's count carries over from the
    /// running quota or, at start, from the count files. A failure changes
    /// nothing.
    pub(super) fn set_caps(&mut self, kbit: u32, month_bytes: u64) -> Result<(), SysError> {
        let used = match self.donation.book.count_from() {
            CountFrom::Kernel => self.nat.as_mut().map_or(Ok(0), |n| n.quota_used())?,
            CountFrom::Files => self.donation.saved(),
        };
        let caps = Caps {
            kbit,
            month_bytes,
            used,
        };
        if let Some(nat) = self.nat.as_mut() {
            nat.set_caps(&nft_caps(caps))?;
        }
        let acts = self.donation.book.installed(Instant::now(), caps);
        self.carry_out(acts);
        Ok(())
    }

    /// Before a request: re-reads a stale count, so grants stop as soon as
    /// the month's volume runs out.
    pub(super) fn refresh_quota(&mut self, now: Instant) {
        if self.donation.book.stale(now) {
            let used = self.read_quota();
            let acts = self.donation.book.counted(now, used);
            self.carry_out(acts);
        }
    }

    /// Saves the month's count; at a new month, starts the quota afresh.
    pub(super) fn check_quota(&mut self, now: Instant) {
        if self.donation.book.check_due(now) {
            let used = self.read_quota();
            let month = Month::of_unix(wall_ms() / 1000);
            let acts = self.donation.book.check(now, month, used);
            self.carry_out(acts);
        }
    }

    /// At exit: the count to both files.
    pub(super) fn save_at_exit(&mut self) {
        if self.donation.caps().month_bytes == 0 {
            return;
        }
        if let Some(Ok(used)) = self.nat.as_mut().map(|n| n.quota_used()) {
            if let Some(c) = self.donation.book.at_exit(used) {
                write_count(&self.donation.ram, c);
                write_count(&self.donation.flash, c);
            }
        }
    }

    fn read_quota(&mut self) -> Option<u64> {
        match self.nat.as_mut()?.quota_used() {
            Ok(used) => Some(used),
            Err(e) => {
                log::warn!("reading the donation quota: {e}");
                None
            }
        }
    }

    fn carry_out(&mut self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Announce(c) => log::info!(
                    "waypoint: donation caps {} kbit/s, {} bytes a month ({} used)",
                    c.kbit,
                    c.month_bytes,
                    c.used
                ),
                Action::UsedUp(why) => log::warn!(
                    "waypoint: this month's donation is used up ({why}): new detours are refused until the month ends or the cap is raised"
                ),
                Action::Donating { used, month_bytes } => log::info!(
                    "waypoint: donating again ({used} of {month_bytes} bytes this month)"
                ),
                Action::NewMonth { last } => {
                    log::info!("new month: donation quota restarts ({last} bytes last month)")
                }
                Action::Install => {
                    let caps = nft_caps(self.donation.caps());
                    if let Some(Err(e)) = self.nat.as_mut().map(|n| n.set_caps(&caps)) {
                        log::warn!("restarting the donation quota: {e}");
                    }
                }
                Action::Save { flash, count } => {
                    write_count(&self.donation.ram, count);
                    if flash {
                        write_count(&self.donation.flash, count);
                    }
                }
            }
        }
        self.core.set_used_up(self.donation.book.refusing());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_files_read_back_as_written() {
        let dir = std::env::temp_dir().join(format!("dcol-donated-{}", std::process::id()));
        let path = dir.join("donated");
        let dec = Month {
            year: 2026,
            month: 12,
        };
        let jan = Month {
            year: 2027,
            month: 1,
        };
        write_count(
            &path,
            Count {
                month: dec,
                bytes: 77,
            },
        );
        assert_eq!(read_count(&path, dec), 77);
        assert_eq!(read_count(&path, jan), 0, "another month's count");
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(read_count(&path, dec), 0);
        assert_eq!(read_count(&dir.join("none"), dec), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
