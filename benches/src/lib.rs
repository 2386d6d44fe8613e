//! Damselfly benchmarks and the swarm simulator (driving `damselfly_swarm::sim`). The criterion
//! benchmarks and the `swarm-sim` binary come with the benchmarks issue.

#![forbid(unsafe_code)]
