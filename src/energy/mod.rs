//! Energy meters. Only the RAPL reader exists so far; the accounting issue
//! wires meters (NVML → RAPL → estimate) into the worker.

pub mod rapl;
