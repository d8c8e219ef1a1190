//! Gives the shared library the SONAME `libcuda.so`: a process that loads it first (by path) has
//! every later `dlopen("libcuda.so")` answered with it, which is how the engine selects the
//! emulated device without library-path settings (engine/src/cuda/driver_lib.rs).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so");
    }
}
