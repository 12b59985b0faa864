//! The memory cap of one provider instance, summed over all its memories
//! and charged to the provider's quota and the daemon's budget.

use std::sync::Arc;

use wasmtime::ResourceLimiter;

use crate::quota::InstanceQuota;

/// Caps the total linear memory of one provider instance, and charges it
/// to the provider's quota and the daemon's budget ([`crate::quota`]).
/// wasmtime's `StoreLimits` caps each memory on its own; a component can
/// have several, so this sums them.
pub struct SandboxLimiter {
    memory_cap: usize,
    memory_used: usize,
    quota: Arc<InstanceQuota>,
    /// Set when a growth was refused, to report RESOURCE_EXHAUSTED rather
    /// than a bare trap.
    pub hit_memory_cap: bool,
}

impl SandboxLimiter {
    pub fn new(memory_cap: usize, quota: Arc<InstanceQuota>) -> Self {
        SandboxLimiter {
            memory_cap,
            memory_used: 0,
            quota,
            hit_memory_cap: false,
        }
    }

    /// All linear memory of the instance, in bytes.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
}

impl Drop for SandboxLimiter {
    fn drop(&mut self) {
        self.quota.release(self.memory_used);
    }
}

/// Caps besides memory: generous for real providers, tight for abuse.
const MAX_TABLE_ELEMENTS: usize = 100_000;
const MAX_INSTANCES: usize = 32;
const MAX_TABLES: usize = 32;
const MAX_MEMORIES: usize = 8;

impl ResourceLimiter for SandboxLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_used + growth;
        if total > self.memory_cap || !self.quota.charge(growth) {
            self.hit_memory_cap = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quota::MemoryBudget;

    fn quota(budget: usize) -> Arc<InstanceQuota> {
        let sizes = crate::quota::Sizes {
            max_concurrent: 1,
            max_queued: 0,
            pool_bytes: budget,
        };
        Arc::new(InstanceQuota::new(
            sizes,
            Arc::new(MemoryBudget::new(budget)),
        ))
    }

    #[test]
    fn memory_cap_is_for_all_memories_together() {
        let quota = quota(1000);
        let mut limiter = SandboxLimiter::new(100, quota.clone());
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "second memory"
        );
        assert!(limiter.hit_memory_cap);
        assert!(limiter.memory_growing(60, 100, None).unwrap());
        assert_eq!(quota.memory_used(), 100);
        drop(limiter);
        assert_eq!(quota.memory_used(), 0, "given back when the instance goes");
    }

    #[test]
    fn the_daemon_budget_caps_growth_too() {
        let mut limiter = SandboxLimiter::new(100, quota(50));
        assert!(!limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.hit_memory_cap);
    }
}
