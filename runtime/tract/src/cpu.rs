//! What the engine uses on this CPU: Ember's int8 kernel and tract's view of the machine.

use crate::kernels::Kernel;
use std::fmt;
use tract_onnx::prelude::tract_linalg;

/// The kernels a model will run with on this machine, as detected at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuReport {
    /// Ember's int8 dot-product kernel (the weight matrices).
    pub int8: Kernel,
    /// The instruction sets tract found (its f32 kernels: attention, norms, softmax).
    pub tract_isa: String,
    /// The core family tract tunes its aarch64 kernels for (`None` elsewhere).
    pub tract_cpu: Option<String>,
}

impl CpuReport {
    /// Detects this machine's kernels.
    pub fn detect() -> Self {
        let isa = tract_linalg::isa::native();
        CpuReport {
            int8: Kernel::detect(),
            tract_isa: isa.iter().map(|i| i.name()).collect::<Vec<_>>().join(","),
            tract_cpu: tract_cpu(),
        }
    }
}

#[cfg(target_arch = "aarch64")]
fn tract_cpu() -> Option<String> {
    Some(format!("{:?}", tract_linalg::arm64::Kind::choose()))
}

#[cfg(not(target_arch = "aarch64"))]
fn tract_cpu() -> Option<String> {
    None
}

impl fmt::Display for CpuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "int8 {}, tract {}", self.int8.name(), self.tract_isa)?;
        if let Some(cpu) = &self.tract_cpu {
            write!(f, " tuned for {cpu}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_this_machines_architecture() {
        let report = CpuReport::detect();
        // Rust and tract name the architectures alike (x86_64, aarch64, arm).
        let arch = std::env::consts::ARCH;
        assert!(report.tract_isa.split(',').any(|i| i == arch), "{report}");
        assert_eq!(report.int8, Kernel::detect());
        assert_eq!(report.tract_cpu.is_some(), arch == "aarch64");
    }
}
