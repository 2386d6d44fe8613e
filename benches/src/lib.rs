//! Damselfly benchmarks and the swarm simulator.
//!
//! [`swarm_sim`] runs the scenarios of [`damselfly_swarm::sim`] (which drives the real
//! `TaskScheduler` and `Picker`) and formats their figures; the `swarm-sim` binary is its
//! command line.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod swarm_sim;
