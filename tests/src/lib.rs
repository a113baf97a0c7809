//! Shoal's deterministic simulator and cluster test harness.
