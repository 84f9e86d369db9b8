//! Builds the C library that `examples/ffi.rs` calls: a parser that
//! segfaults and aborts on bad input, as real C code does.
//!
//! Only that example links it (`#[link(name = "loky_ffi_parse")]`); this
//! script only says where the archive is, so tests and benches link nothing
//! new, and it reruns only when the C source changes.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=examples/ffi/parse.c");
    cc::Build::new()
        .file("examples/ffi/parse.c")
        .warnings(true)
        // Only the search path: the example names the library itself.
        .cargo_metadata(false)
        .compile("loky_ffi_parse");
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rustc-link-search=native={out_dir}");
}
