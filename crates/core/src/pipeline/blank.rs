//! Which flash the blank-check stage reads, from the policy's
//! `target.blank_check`, the device's flash as identify reported it and the
//! job's images.
//!
//! Programming only clears bits, and every image is read back at verify, so
//! a bit the erase left programmed inside an image is caught there; reading
//! the images before programming them only repeats that. What verify never
//! reads is the flash the images do not cover, where earlier firmware or keys
//! could remain: that is what the default checks.

use flashgate_policy::BlankCheck;
use flashgate_target::{FlashRange, MemoryRegion};

/// The ranges that must read erased after the chip erase, in address order.
///
/// - [`BlankCheck::Uncovered`]: `device_flash` minus every image (the parts
///   of images outside the device's flash are ignored; programming refuses
///   them).
/// - [`BlankCheck::Full`]: the whole of `device_flash`.
/// - [`BlankCheck::None`]: nothing, the check is skipped.
pub fn blank_check_ranges(
    policy: BlankCheck,
    device_flash: &MemoryRegion,
    images: &[FlashRange],
) -> Vec<FlashRange> {
    let start = u64::from(device_flash.base);
    let end = device_flash.end();
    match policy {
        BlankCheck::Full => to_ranges(&[(start, end)]),
        BlankCheck::Uncovered => {
            // The images clipped to the flash, sorted, then the gaps between them.
            let mut covered: Vec<(u64, u64)> = images
                .iter()
                .map(|r| {
                    let a = u64::from(r.address);
                    (a.max(start), (a + u64::from(r.length)).min(end))
                })
                .filter(|(a, b)| a < b)
                .collect();
            covered.sort_unstable();
            let mut gaps = Vec::new();
            let mut at = start;
            for (a, b) in covered {
                if a > at {
                    gaps.push((at, a));
                }
                at = at.max(b);
            }
            if at < end {
                gaps.push((at, end));
            }
            to_ranges(&gaps)
        }
        BlankCheck::None => Vec::new(),
    }
}

/// `[a, b)` spans inside one [`MemoryRegion`] as [`FlashRange`]s: `a` is
/// below 2^32 and `b - a` at most the region's `u32` size, so both fit.
fn to_ranges(spans: &[(u64, u64)]) -> Vec<FlashRange> {
    spans
        .iter()
        .map(|&(a, b)| {
            FlashRange::new(
                u32::try_from(a).unwrap_or(u32::MAX),
                u32::try_from(b - a).unwrap_or(u32::MAX),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AVR: MemoryRegion = MemoryRegion {
        base: 0,
        size: 32 * 1024,
        page_size: 128,
    };
    const STM32: MemoryRegion = MemoryRegion {
        base: 0x0800_0000,
        size: 128 * 1024,
        page_size: 1024,
    };

    fn r(address: u32, length: u32) -> FlashRange {
        FlashRange::new(address, length)
    }

    #[test]
    fn an_image_that_fills_the_flash_leaves_nothing_to_check() {
        let got = blank_check_ranges(BlankCheck::Uncovered, &AVR, &[r(0, 32 * 1024)]);
        assert_eq!(got, []);
    }

    #[test]
    fn the_flash_after_an_image_at_the_start_is_checked() {
        let got = blank_check_ranges(BlankCheck::Uncovered, &STM32, &[r(0x0800_0000, 0x4000)]);
        assert_eq!(got, [r(0x0800_4000, 128 * 1024 - 0x4000)]);
    }

    #[test]
    fn gaps_before_between_and_after_images_in_address_order() {
        // Given out of order, one overlapping another, one inside another.
        let images = [
            r(0x6000, 0x100),
            r(0x1000, 0x800),
            r(0x1400, 0x800),
            r(0x1100, 0x10),
        ];
        let got = blank_check_ranges(BlankCheck::Uncovered, &AVR, &images);
        assert_eq!(
            got,
            [
                r(0, 0x1000),
                r(0x1C00, 0x6000 - 0x1C00),
                r(0x6100, 0x8000 - 0x6100)
            ]
        );
    }

    #[test]
    fn adjacent_images_leave_no_empty_gap() {
        let got = blank_check_ranges(
            BlankCheck::Uncovered,
            &AVR,
            &[r(0, 0x4000), r(0x4000, 0x3000)],
        );
        assert_eq!(got, [r(0x7000, 0x1000)]);
    }

    #[test]
    fn images_partly_outside_the_flash_are_clipped() {
        let got = blank_check_ranges(
            BlankCheck::Uncovered,
            &STM32,
            &[r(0x07FF_F000, 0x2000), r(0x0801_F000, 0x4000), r(0, 0x10)],
        );
        assert_eq!(got, [r(0x0800_1000, 0x1_E000)]);
    }

    #[test]
    fn without_images_the_whole_flash_is_uncovered() {
        assert_eq!(
            blank_check_ranges(BlankCheck::Uncovered, &STM32, &[]),
            [r(0x0800_0000, 128 * 1024)]
        );
    }

    #[test]
    fn full_is_the_whole_flash_and_none_is_nothing() {
        let images = [r(0, 0x100)];
        assert_eq!(
            blank_check_ranges(BlankCheck::Full, &AVR, &images),
            [r(0, 32 * 1024)]
        );
        assert_eq!(blank_check_ranges(BlankCheck::None, &AVR, &images), []);
    }

    #[test]
    fn a_flash_reaching_the_top_of_the_address_space() {
        let top = MemoryRegion {
            base: 0xFFFF_0000,
            size: 0x1_0000,
            page_size: 256,
        };
        assert_eq!(
            blank_check_ranges(BlankCheck::Uncovered, &top, &[r(0xFFFF_0000, 0x100)]),
            [r(0xFFFF_0100, 0xFF00)]
        );
        let all = MemoryRegion {
            base: 0,
            size: u32::MAX,
            page_size: 256,
        };
        assert_eq!(
            blank_check_ranges(BlankCheck::Full, &all, &[]),
            [r(0, u32::MAX)]
        );
    }
}
