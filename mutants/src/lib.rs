//! The extension's pure logic, `src/model/`, as a crate of its own for
//! mutation testing. Mounted as `model` at the root, as in the extension,
//! so the tests' `crate::model::...` paths resolve. `make mutants` copies
//! `src/model/` beside this file (the copy keeps the paths cargo-mutants
//! reports the same as in the repository: `src/model/...`).

#![allow(dead_code)]

pub mod model;
