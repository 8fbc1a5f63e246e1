//! Placeholder: the slow-disk FUSE harness goes here.
