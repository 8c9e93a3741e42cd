//! The CMOS real-time clock (MC146818 compatible) at ports 0x70/0x71.
//!
//! Without it a Linux guest reads `0xff` from every CMOS register, loops in
//! `mc146818_avoid_UIP` (tens of thousands of port exits per boot), gives up
//! with "rtc_cmos: broken or not accessible" and starts its clock in 1970.
//!
//! Port 0x70 selects a register (bit 7 is the NMI mask on a PC and is
//! ignored here); port 0x71 reads or writes it. The 128 registers are:
//!
//! - 0x00–0x09 and 0x32 (century, where ACPI's FADT points): the time, read
//!   from the host's UTC clock at every read, plus the guest's offset from
//!   it. A guest that sets the clock (set B.SET, write the registers, clear
//!   SET, as `hwclock -w` does) keeps the difference from the host clock, so
//!   its time advances from what it wrote. The date arithmetic is done here
//!   (days from a civil date), in the encoding register B asks for: BCD or
//!   binary (DM, bit 2), 24- or 12-hour with the PM flag in bit 7 (bit 1).
//! - 0x01/0x03/0x05: alarm registers, stored.
//! - A: the divider bits as a chip after initialisation (0x26). UIP (bit 7)
//!   is emulated from the host clock: it reads 1 during the last 244 µs of
//!   each second while the clock runs, as the chip shows it before an
//!   update, so programs that wait for its edges (`hwclock --directisa`) see
//!   them, and Linux's `mc146818_avoid_UIP` retries for at most a
//!   millisecond.
//! - B: 0x02 (24-hour, BCD) by default; SET (bit 7) freezes the time
//!   registers until it is cleared.
//! - C: flags, cleared by reading; only UF (bit 4, an update ended since
//!   the last read) is ever set.
//! - D: VRT (bit 7) = 1, "the battery is good"; bit 6 is 0, which Linux
//!   checks before it trusts the chip.
//! - everything else is battery-backed NVRAM the guest can write and read.
//!
//! No interrupt is raised: IRQ 8 (periodic, alarm and update-ended
//! interrupts) is not emulated, so the enable bits of B are stored and have
//! no effect, and C never shows IRQF, PF or AF.

// Every narrowing cast below is of a value already reduced to its range
// (`% 100`, `% 256`, `rem_euclid`, or a calendar field).
#![allow(clippy::cast_possible_truncation)]

use crate::bus::{BusDevice, VmAction};

/// The time source: nanoseconds since the Unix epoch, UTC.
///
/// A plain function so that tests can substitute a deterministic one.
pub type Clock = fn() -> i128;

/// The host's `CLOCK_REALTIME`, in nanoseconds since the Unix epoch.
pub fn host_clock() -> i128 {
    let now = std::time::SystemTime::now();
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

const NANOS_PER_SEC: i128 = 1_000_000_000;
/// How long before each update UIP reads 1 (t_BUC, 244 µs at 32.768 kHz).
const UIP_NANOS: i128 = 244_000;

// The alarm registers (0x01, 0x03, 0x05) are plain stored bytes.
const REG_SECONDS: usize = 0x00;
const REG_MINUTES: usize = 0x02;
const REG_HOURS: usize = 0x04;
const REG_WEEKDAY: usize = 0x06;
const REG_DAY: usize = 0x07;
const REG_MONTH: usize = 0x08;
const REG_YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// The century register ACPI's FADT names (`century` = 0x32).
pub const REG_CENTURY: usize = 0x32;

/// Register A: the update in progress flag.
const A_UIP: u8 = 0x80;
/// Register A after initialisation: 32.768 kHz time base (DV = 010),
/// 1024 Hz periodic rate (RS = 0110).
const A_DEFAULT: u8 = 0x26;
/// Register A: divider bits of a running 32.768 kHz time base.
const A_DV_RUNNING: u8 = 0x20;
const A_DV_MASK: u8 = 0x70;

/// Register B: updates frozen while the guest sets the time.
const B_SET: u8 = 0x80;
/// Register B: update-ended interrupt enable (cleared when SET is set).
const B_UIE: u8 = 0x10;
/// Register B: binary (1) or BCD (0) time registers.
const B_DM_BINARY: u8 = 0x04;
/// Register B: 24-hour (1) or 12-hour (0) mode.
const B_24H: u8 = 0x02;
/// Register B at power-on as Linux expects it: 24-hour, BCD.
const B_DEFAULT: u8 = B_24H;

/// Register C: an update ended since C was last read.
const C_UF: u8 = 0x10;
/// Register D: valid RAM and time (the battery is good).
const D_VRT: u8 = 0x80;

/// The hour register's PM flag in 12-hour mode.
const HOUR_PM: u8 = 0x80;

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d`
/// (`m` in 1..=12, `d` in 1..=31; days past the month's end roll over).
/// Howard Hinnant's `days_from_civil`.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let m = i64::from(m);
    let mp = (m + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date `(y, m, d)` of `days` since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Both are in range by construction.
    (y, m as u32, d as u32)
}

/// A broken-down UTC time as the RTC counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 1 = Sunday … 7 = Saturday, as the chip counts.
    weekday: u32,
}

impl DateTime {
    fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(SECS_PER_DAY);
        let rem = secs.rem_euclid(SECS_PER_DAY); // [0, 86399]
        let (year, month, day) = civil_from_days(days);
        // 1970-01-01 was a Thursday (5 in 1 = Sunday numbering).
        let weekday = (days + 4).rem_euclid(7) as u32 + 1;
        Self {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem / 60 % 60) as u32,
            second: (rem % 60) as u32,
            weekday,
        }
    }

    fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

fn to_bcd(v: u32) -> u8 {
    let v = v % 100;
    (((v / 10) << 4) | (v % 10)) as u8
}

/// Decodes a BCD byte; `None` if a digit is not 0–9.
fn from_bcd(b: u8) -> Option<u32> {
    let (hi, lo) = (u32::from(b >> 4), u32::from(b & 0x0f));
    (hi < 10 && lo < 10).then_some(hi * 10 + lo)
}

/// The MC146818 CMOS RTC with its NVRAM.
#[derive(Debug)]
pub struct Rtc {
    /// The selected register, 0..=127.
    index: u8,
    /// Stored registers: alarms, A (without UIP), B, the NVRAM, and the time
    /// registers while SET freezes them.
    regs: [u8; 128],
    /// Guest time minus host time, in seconds.
    offset: i64,
    /// The guest second at which C was last read (for UF).
    last_c_read: i64,
    /// Time writes whose values did not make a date, kept for diagnostics.
    bad_time_writes: u64,
    clock: Clock,
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC reading the host's clock.
    pub fn new() -> Self {
        Self::with_clock(host_clock)
    }

    /// An RTC reading `clock` (for tests).
    pub fn with_clock(clock: Clock) -> Self {
        let mut regs = [0u8; 128];
        regs[REG_A] = A_DEFAULT;
        regs[REG_B] = B_DEFAULT;
        regs[REG_D] = D_VRT;
        let mut rtc = Self {
            index: 0,
            regs,
            offset: 0,
            last_c_read: 0,
            bad_time_writes: 0,
            clock,
        };
        rtc.last_c_read = rtc.guest_secs();
        rtc
    }

    /// Writes of the time registers that did not decode to a date (the
    /// guest's previous time was kept).
    pub fn bad_time_writes(&self) -> u64 {
        self.bad_time_writes
    }

    fn now_nanos(&self) -> i128 {
        (self.clock)()
    }

    fn guest_secs(&self) -> i64 {
        let host = self.now_nanos().div_euclid(NANOS_PER_SEC);
        i64::try_from(host)
            .unwrap_or(if host < 0 { i64::MIN } else { i64::MAX })
            .saturating_add(self.offset)
    }

    fn frozen(&self) -> bool {
        self.regs[REG_B] & B_SET != 0
    }

    fn is_time_reg(index: usize) -> bool {
        matches!(
            index,
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH | REG_YEAR
        ) || index == REG_CENTURY
    }

    fn encode(&self, v: u32) -> u8 {
        if self.regs[REG_B] & B_DM_BINARY != 0 {
            (v % 256) as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, b: u8) -> Option<u32> {
        if self.regs[REG_B] & B_DM_BINARY != 0 {
            Some(u32::from(b))
        } else {
            from_bcd(b)
        }
    }

    fn encode_hour(&self, hour: u32) -> u8 {
        if self.regs[REG_B] & B_24H != 0 {
            return self.encode(hour);
        }
        let pm = if hour >= 12 { HOUR_PM } else { 0 };
        let h12 = match hour % 12 {
            0 => 12,
            h => h,
        };
        self.encode(h12) | pm
    }

    fn decode_hour(&self, b: u8) -> Option<u32> {
        if self.regs[REG_B] & B_24H != 0 {
            return self.decode(b).filter(|h| *h < 24);
        }
        let h12 = self.decode(b & !HOUR_PM).filter(|h| (1..=12).contains(h))?;
        Some(h12 % 12 + if b & HOUR_PM != 0 { 12 } else { 0 })
    }

    /// The time register `index` of `t`, in the current encoding.
    fn time_reg(&self, t: &DateTime, index: usize) -> u8 {
        match index {
            REG_SECONDS => self.encode(t.second),
            REG_MINUTES => self.encode(t.minute),
            REG_HOURS => self.encode_hour(t.hour),
            REG_WEEKDAY => self.encode(t.weekday),
            REG_DAY => self.encode(t.day),
            REG_MONTH => self.encode(t.month),
            REG_YEAR => self.encode(t.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(t.year.div_euclid(100).rem_euclid(100) as u32),
            _ => 0,
        }
    }

    /// Copies the running time into the stored time registers.
    fn snapshot(&mut self) {
        let t = DateTime::from_unix(self.guest_secs());
        for i in [
            REG_SECONDS,
            REG_MINUTES,
            REG_HOURS,
            REG_WEEKDAY,
            REG_DAY,
            REG_MONTH,
            REG_YEAR,
            REG_CENTURY,
        ] {
            self.regs[i] = self.time_reg(&t, i);
        }
    }

    /// The time the stored registers say, if they make a date.
    fn stored_time(&self) -> Option<i64> {
        let r = &self.regs;
        let second = self.decode(r[REG_SECONDS]).filter(|s| *s < 60)?;
        let minute = self.decode(r[REG_MINUTES]).filter(|m| *m < 60)?;
        let hour = self.decode_hour(r[REG_HOURS])?;
        let day = self.decode(r[REG_DAY]).filter(|d| (1..=31).contains(d))?;
        let month = self.decode(r[REG_MONTH]).filter(|m| (1..=12).contains(m))?;
        let year = self.decode(r[REG_YEAR]).filter(|y| *y < 100)?;
        let century = self.decode(r[REG_CENTURY]).filter(|c| *c < 100)?;
        let t = DateTime {
            year: i64::from(century * 100 + year),
            month,
            day,
            hour,
            minute,
            second,
            weekday: 0,
        };
        Some(t.to_unix())
    }

    /// Starts the clock again from the stored time registers.
    fn resume_from_stored(&mut self) {
        match self.stored_time() {
            Some(guest) => {
                let host = self.guest_secs().saturating_sub(self.offset);
                self.offset = guest.saturating_sub(host);
                self.last_c_read = guest;
            }
            None => {
                self.bad_time_writes += 1;
                accounting::warn_rl!("rtc: the guest wrote a time that is not a date; kept the old one");
            }
        }
    }

    fn uip(&self) -> bool {
        if self.frozen() || self.regs[REG_A] & A_DV_MASK != A_DV_RUNNING {
            return false;
        }
        self.now_nanos().rem_euclid(NANOS_PER_SEC) >= NANOS_PER_SEC - UIP_NANOS
    }

    fn read_reg(&mut self, index: usize) -> u8 {
        match index {
            _ if Self::is_time_reg(index) && !self.frozen() => {
                let t = DateTime::from_unix(self.guest_secs());
                self.time_reg(&t, index)
            }
            REG_A => self.regs[REG_A] | if self.uip() { A_UIP } else { 0 },
            REG_C => {
                let now = self.guest_secs();
                let uf = !self.frozen() && now != self.last_c_read;
                self.last_c_read = now;
                if uf {
                    C_UF
                } else {
                    0
                }
            }
            REG_D => D_VRT,
            _ => self.regs.get(index).copied().unwrap_or(0xff),
        }
    }

    fn write_reg(&mut self, index: usize, v: u8) {
        match index {
            _ if Self::is_time_reg(index) => {
                if self.frozen() {
                    self.regs[index] = v;
                } else {
                    // A running clock takes the new value and counts on from it.
                    self.snapshot();
                    self.regs[index] = v;
                    self.resume_from_stored();
                }
            }
            REG_A => self.regs[REG_A] = v & !A_UIP,
            REG_B => {
                let was_frozen = self.frozen();
                let v = if v & B_SET != 0 { v & !B_UIE } else { v };
                if !was_frozen && v & B_SET != 0 {
                    // Freeze what the guest would have read (old encoding).
                    self.snapshot();
                }
                self.regs[REG_B] = v;
                if was_frozen && v & B_SET == 0 {
                    self.resume_from_stored();
                }
            }
            // C and D are read-only.
            REG_C | REG_D => {}
            _ => {
                if let Some(r) = self.regs.get_mut(index) {
                    *r = v;
                }
            }
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Byte registers; a wide access covers the following port too.
        for (i, d) in data.iter_mut().enumerate() {
            *d = match offset.saturating_add(i as u64) {
                // The index port is write-only on a PC.
                0 => 0xff,
                1 => self.read_reg(usize::from(self.index)),
                _ => 0xff,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmAction> {
        for (i, &v) in data.iter().enumerate() {
            match offset.saturating_add(i as u64) {
                // Bit 7 masks NMIs on a PC; it is not part of the index.
                0 => self.index = v & 0x7f,
                1 => self.write_reg(usize::from(self.index), v),
                _ => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        static NOW: Cell<i128> = const { Cell::new(0) };
    }

    fn test_clock() -> i128 {
        NOW.with(Cell::get)
    }

    fn set_now(secs: i64, nanos: i128) {
        NOW.with(|n| n.set(i128::from(secs) * NANOS_PER_SEC + nanos));
    }

    /// 2024-02-29 13:05:09 UTC, a Thursday.
    const LEAP_DAY_PM: i64 = 1_709_211_909;

    fn rtc_at(secs: i64) -> Rtc {
        set_now(secs, 0);
        Rtc::with_clock(test_clock)
    }

    fn read(rtc: &mut Rtc, index: u8) -> u8 {
        rtc.write(0, &[index]);
        let mut b = [0u8];
        rtc.read(1, &mut b);
        b[0]
    }

    fn write(rtc: &mut Rtc, index: u8, v: u8) {
        rtc.write(0, &[index]);
        rtc.write(1, &[v]);
    }

    fn time_regs(rtc: &mut Rtc) -> [u8; 8] {
        [0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map(|i| read(rtc, i))
    }

    #[test]
    fn civil_dates_round_trip_across_leap_years() {
        let cases = [
            ((1970, 1, 1), 0),
            ((2000, 2, 29), 11_016),
            ((2000, 3, 1), 11_017),
            ((1900, 3, 1), -25_508),
            ((2100, 3, 1), 47_541),
            ((2024, 2, 29), 19_782),
            ((1969, 12, 31), -1),
        ];
        for ((y, m, d), days) in cases {
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
            assert_eq!(civil_from_days(days), (y, m, d));
        }
        // Every day for 800 years round-trips and follows the previous one.
        let mut prev = civil_from_days(days_from_civil(1800, 1, 1) - 1);
        for days in days_from_civil(1800, 1, 1)..days_from_civil(2600, 1, 1) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
            assert!((y, m, d) > prev);
            prev = (y, m, d);
        }
        // 1900 and 2100 are not leap years; 2000 is.
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 29)), (1900, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(2100, 2, 29)), (2100, 3, 1));
    }

    #[test]
    fn reads_a_known_instant_in_bcd_24_hour() {
        let mut rtc = rtc_at(LEAP_DAY_PM);

        let regs = time_regs(&mut rtc);

        // sec, min, hour, weekday (Thursday = 5), day, month, year, century
        assert_eq!(regs, [0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]);
    }

    #[test]
    fn reads_binary_when_dm_is_set() {
        let mut rtc = rtc_at(LEAP_DAY_PM);

        write(&mut rtc, 0x0b, B_24H | B_DM_BINARY);

        assert_eq!(time_regs(&mut rtc), [9, 5, 13, 5, 29, 2, 24, 20]);
    }

    #[test]
    fn twelve_hour_mode_sets_the_pm_bit() {
        let mut rtc = rtc_at(LEAP_DAY_PM);
        write(&mut rtc, 0x0b, 0); // 12-hour, BCD

        assert_eq!(read(&mut rtc, 0x04), 0x80 | 0x01);

        write(&mut rtc, 0x0b, B_DM_BINARY); // 12-hour, binary
        assert_eq!(read(&mut rtc, 0x04), 0x80 | 1);

        // Midnight is 12 AM, noon 12 PM.
        set_now(days_from_civil(2024, 3, 1) * SECS_PER_DAY, 0);
        assert_eq!(read(&mut rtc, 0x04), 12);
        set_now(days_from_civil(2024, 3, 1) * SECS_PER_DAY + 12 * 3600, 0);
        assert_eq!(read(&mut rtc, 0x04), 0x80 | 12);
    }

    #[test]
    fn register_d_reports_valid_ram_and_time() {
        let mut rtc = rtc_at(0);

        write(&mut rtc, 0x0d, 0);

        assert_eq!(read(&mut rtc, 0x0d), 0x80);
    }

    #[test]
    fn register_a_reads_the_initialised_divider_and_uip_before_an_update() {
        set_now(LEAP_DAY_PM, 500_000_000);
        let mut rtc = Rtc::with_clock(test_clock);
        assert_eq!(read(&mut rtc, 0x0a), 0x26);

        set_now(LEAP_DAY_PM, NANOS_PER_SEC - 100_000);
        assert_eq!(read(&mut rtc, 0x0a), 0x80 | 0x26);

        // UIP is never set while SET freezes the clock.
        write(&mut rtc, 0x0b, B_SET | B_24H);
        assert_eq!(read(&mut rtc, 0x0a), 0x26);
    }

    #[test]
    fn register_c_reports_an_update_once_and_clears_on_read() {
        let mut rtc = rtc_at(LEAP_DAY_PM);
        assert_eq!(read(&mut rtc, 0x0c), 0);

        set_now(LEAP_DAY_PM + 1, 0);

        assert_eq!(read(&mut rtc, 0x0c), C_UF);
        assert_eq!(read(&mut rtc, 0x0c), 0);
    }

    #[test]
    fn nvram_round_trips_every_byte() {
        let mut rtc = rtc_at(0);
        let nvram: Vec<u8> = (0x0e..0x80).filter(|&i| i != 0x32).collect();

        for &i in &nvram {
            write(&mut rtc, i, i ^ 0xa5);
        }

        for &i in &nvram {
            assert_eq!(read(&mut rtc, i), i ^ 0xa5, "register {i:#x}");
        }
    }

    #[test]
    fn alarms_are_stored() {
        let mut rtc = rtc_at(0);

        write(&mut rtc, 0x01, 0x30);
        write(&mut rtc, 0x03, 0x15);
        write(&mut rtc, 0x05, 0x07);

        assert_eq!([0x01, 0x03, 0x05].map(|i| read(&mut rtc, i)), [0x30, 0x15, 0x07]);
    }

    #[test]
    fn guest_set_time_advances_with_the_host_clock() {
        let mut rtc = rtc_at(LEAP_DAY_PM);

        // As hwclock -w: SET, write 1999-12-31 23:59:58, clear SET.
        write(&mut rtc, 0x0b, B_SET | B_24H);
        for (i, v) in [
            (0x00, 0x58),
            (0x02, 0x59),
            (0x04, 0x23),
            (0x07, 0x31),
            (0x08, 0x12),
            (0x09, 0x99),
            (0x32, 0x19),
        ] {
            write(&mut rtc, i, v);
        }
        set_now(LEAP_DAY_PM + 100, 0); // time passes while SET holds the clock
        assert_eq!(read(&mut rtc, 0x00), 0x58);
        write(&mut rtc, 0x0b, B_24H);
        assert_eq!(read(&mut rtc, 0x00), 0x58);

        set_now(LEAP_DAY_PM + 103, 0);

        // 1999-12-31 23:59:58 + 3 s = 2000-01-01 00:00:01, a Saturday.
        assert_eq!(
            time_regs(&mut rtc),
            [0x01, 0x00, 0x00, 0x07, 0x01, 0x01, 0x00, 0x20]
        );
    }

    #[test]
    fn a_write_to_a_running_clock_counts_on_from_it() {
        let mut rtc = rtc_at(LEAP_DAY_PM);

        write(&mut rtc, 0x02, 0x40); // minutes = 40
        set_now(LEAP_DAY_PM + 60, 0);

        assert_eq!([0x00, 0x02, 0x04].map(|i| read(&mut rtc, i)), [0x09, 0x41, 0x13]);
    }

    #[test]
    fn an_invalid_time_keeps_the_previous_one() {
        let mut rtc = rtc_at(LEAP_DAY_PM);

        write(&mut rtc, 0x0b, B_SET | B_24H);
        write(&mut rtc, 0x08, 0x13); // month 13
        write(&mut rtc, 0x0b, B_24H);

        assert_eq!(rtc.bad_time_writes(), 1);
        assert_eq!(
            time_regs(&mut rtc),
            [0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
        );
    }

    #[test]
    fn index_bit_7_is_the_nmi_mask_and_ignored() {
        let mut rtc = rtc_at(0);
        write(&mut rtc, 0x20, 0x5a);

        rtc.write(0, &[0x80 | 0x20]);
        let mut b = [0u8];
        rtc.read(1, &mut b);

        assert_eq!(b[0], 0x5a);
    }

    #[test]
    fn out_of_range_index_is_masked_to_the_128_registers() {
        let mut rtc = rtc_at(0);

        write(&mut rtc, 0xff, 0x33); // the same as 0x7f

        assert_eq!(read(&mut rtc, 0x7f), 0x33);
    }

    #[test]
    fn a_wide_access_covers_index_and_data() {
        let mut rtc = rtc_at(0);
        write(&mut rtc, 0x40, 0x77);

        rtc.write(0, &[0x40, 0x78]);
        let mut b = [0u8; 2];
        rtc.read(0, &mut b);

        assert_eq!(b, [0xff, 0x78]);
    }

    #[test]
    fn times_before_the_epoch_and_far_ahead_do_not_panic() {
        for secs in [i64::MIN, -1, i64::MAX] {
            let mut rtc = rtc_at(secs);
            let _ = time_regs(&mut rtc);
            write(&mut rtc, 0x09, 0x99);
            let _ = time_regs(&mut rtc);
        }
    }
}
