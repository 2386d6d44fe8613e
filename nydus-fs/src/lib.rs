//! nydus-fs: the lazy, merkle-verified image format, converter and FUSE mount. Not built yet:
//! see the project's issue for lazy images.

#![forbid(unsafe_code)]
