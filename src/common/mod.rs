//! The ground floor: types that every layer uses and that therefore belong to none of
//! them. Nothing here imports from any other module of the crate; every other module
//! may import from here.

pub mod decode;
pub mod event;
pub mod level;
pub mod protocol;
pub mod safe_fs;
pub mod state;
