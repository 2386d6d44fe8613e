//! dfdaemon: the per-node registry mirror (containerd, Docker, Podman pull through it; blob
//! GETs go through the dfget engine). Not built yet: see the project's issue for the mirror.

#![forbid(unsafe_code)]
