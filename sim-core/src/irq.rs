//! Level-triggered interrupt lines (GSIs) with several sources each: a line
//! is asserted while any of its sources holds it high, so a device sharing a
//! GSI with the platform's callback keeps its own level.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GsiLines {
    /// (gsi, source) pairs currently held high.
    high: BTreeMap<(u32, u32), ()>,
    /// GSIs whose combined level changed since the last `take_changed`.
    changed: BTreeMap<u32, ()>,
}

/// Source identifiers for `GsiLines::set`.
pub mod source {
    /// The Xen platform's event-channel callback (CALLBACK_IRQ GSI / PCI INTx).
    pub const XEN_CALLBACK: u32 = 1;
    /// The 16550 UART.
    pub const UART: u32 = 2;
}

impl GsiLines {
    pub fn new() -> Self {
        Self::default()
    }

    /// Drive `gsi` from `source` to `level`.
    pub fn set(&mut self, gsi: u32, source: u32, level: bool) {
        let before = self.level(gsi);
        if level {
            self.high.insert((gsi, source), ());
        } else {
            self.high.remove(&(gsi, source));
        }
        if self.level(gsi) != before {
            self.changed.insert(gsi, ());
        }
    }

    /// The combined level of `gsi`.
    pub fn level(&self, gsi: u32) -> bool {
        self.high.range((gsi, 0)..=(gsi, u32::MAX)).next().is_some()
    }

    /// Whether `source` holds `gsi` high.
    pub fn source_level(&self, gsi: u32, source: u32) -> bool {
        self.high.contains_key(&(gsi, source))
    }

    /// GSIs whose combined level changed, ascending, with their new level.
    pub fn take_changed(&mut self) -> Vec<(u32, bool)> {
        let changed = std::mem::take(&mut self.changed);
        changed.into_keys().map(|g| (g, self.level(g))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_line_stays_high_while_any_source_holds_it() {
        let mut l = GsiLines::new();
        l.set(5, source::XEN_CALLBACK, true);
        l.set(5, source::UART, true);
        assert_eq!(l.take_changed(), vec![(5, true)]);
        l.set(5, source::XEN_CALLBACK, false);
        assert!(l.level(5), "the UART still holds it");
        assert!(l.take_changed().is_empty(), "combined level did not change");
        l.set(5, source::UART, false);
        assert_eq!(l.take_changed(), vec![(5, false)]);
        assert!(!l.level(4) && !l.level(6));
    }
}
